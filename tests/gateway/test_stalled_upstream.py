"""An upstream that goes quiet mid-stream, under hard budgets, four callers at once.

Each call streams a few pieces and then nothing: the gateway gives up on it after the
upstream timeout of silence, tells its caller, writes its span (an error, charged the
pieces it streamed), gives its hold in the budget back and its slot to the next call.
Nothing of the four is left behind: not a hold, not a slot, not a call in flight.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import ollama
import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._meter import utc_now
from ollama_meter.pricing import PriceRule
from ollama_meter.records import to_micros
from ollama_meter.testing import Fault, OllamaEmulator
from tests.factories import quick_history
from tests.gateway.conftest import Gateway

OUT_PRICE = 2_000
"""Micro-USD a reply token; prompts are free: a call's bound is its cap's price."""
CAP = 10
SHOWN = 3
"""Pieces each stalled call streams before it goes quiet."""
CALLERS = 4
_runs = itertools.count()


def dash(gw: Gateway) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{gw.url}/api/dash", timeout=10).json()
    return answer


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stream(gw: Gateway, department: str, cap: int) -> tuple[int, str | None]:
    """A streamed chat through the official client: the pieces it got, and the error it
    ended on (None: it ended well)."""
    client = ollama.Client(host=gw.url, headers={"X-Ometer-Department": department})
    got = 0
    try:
        for part in client.chat(
            "llama3.1:8b",
            [{"role": "user", "content": "hello from the crm bot"}],
            options={"num_predict": cap},
            stream=True,
        ):
            got += bool(part.message.content)
    except ollama.ResponseError as error:
        return got, f"{error.status_code} {error.error}"
    return got, None


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.fixture
def quiet(serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """A served gateway of four slots that gives up on two seconds of silence from Ollama (and
    keeps calling the model after four such failures: its circuit is tested elsewhere). One
    second was once too short for a loaded CI machine's first piece: a caller got none."""
    config = {"slots": CALLERS, "upstream_timeout": 2.0, "retries": 0, "breaker_failures": 100}
    gw = serve_on(emulator.url, sqlite_url, config=config)
    gw.ledger.add_price_rule(PriceRule(pattern="*", currency="USD", output_per_1m=Decimal(2000)))
    return gw


def test_four_streams_that_stall_give_back_their_holds_slots_and_leave_exact_spans(
    quiet: Gateway, emulator: OllamaEmulator
) -> None:
    run = next(_runs)
    departments = [f"q{run}-{i}" for i in range(CALLERS)]
    for department in departments:  # each exactly one call's bound
        quiet.ledger.save_budget(Budget("default", department, "day", CAP * OUT_PRICE, "USD"))
    assert quiet.meter.budgets is not None
    quiet.meter.budgets.reload_soon()
    emulator.inject(Fault.STALL, times=CALLERS, after_tokens=SHOWN)
    results = at_once([lambda d=d: stream(quiet, d, CAP) for d in departments])
    for got, error in results:  # each caller told, after the pieces it was sent
        assert got == SHOWN and error is not None and "stopped answering mid-stream" in error, (
            results
        )
    quiet.settle()
    for department in departments:
        (span,) = quiet.ledger.latest(SpanFilter(department=department), 5)
        assert (span.status, span.error_type, span.token_source) == (
            "error",
            "timeout",
            "estimated",
        )
        assert (span.output_tokens, span.cost_total) == (SHOWN, SHOWN * OUT_PRICE)
    # No call in flight, none waiting, every slot free.
    state = dash(quiet)
    assert state["queue"] == {"waiting": 0, "by_department": {}}
    assert [s["in_flight"] for s in state["servers"]] == [0]
    metrics = httpx.get(f"{quiet.url}/metrics", timeout=10).text
    assert "ometer_requests_in_flight 0.0" in metrics
    # Each hold is given back: what is left admits a call of exactly that bound, at once,
    # all four together (four slots: a slot kept by a stalled call would make one wait).
    emulator.token_latency = 0.2
    left = CAP - SHOWN
    try:
        results = at_once(
            [
                *[lambda d=d: stream(quiet, d, left) for d in departments],
                lambda: wait_for(
                    lambda: [s["in_flight"] for s in dash(quiet)["servers"]] == [CALLERS],
                    "all four calls to run at once",
                ),
            ]
        )
    finally:
        emulator.token_latency = 0.0
    assert results[:CALLERS] == [(left, None)] * CALLERS
    quiet.settle()
    for department in departments:
        spans = quiet.ledger.latest(SpanFilter(department=department), 5)
        assert [s.status for s in spans] == ["ok", "error"]
        assert sum(s.cost_total for s in spans) == CAP * OUT_PRICE  # the limit, exactly
    assert dash(quiet)["queue"] == {"waiting": 0, "by_department": {}}


@pytest.fixture
def timed(serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """A served gateway of four slots pricing the GPU-hour (1 USD a second), whose ledger has
    seen one quick call of the model: a hard budget times a call to well under a second."""
    config = {"slots": CALLERS, "retries": 0, "breaker_failures": 100}  # 300 s of silence
    gw = serve_on(emulator.url, sqlite_url, config=config)
    gw.ledger.add_price_rule(PriceRule(pattern="*", currency="USD", gpu_hour=Decimal(3600)))
    gw.ledger.record([replace(quick_history(), started_at=utc_now() - timedelta(minutes=1))])
    return gw


def bound_of(gw: Gateway, cap: int) -> int:
    """What a hard budget holds for the test's chat, as a refusal says it (micro-USD)."""
    department = f"b{next(_runs)}"
    gw.ledger.save_budget(Budget("default", department, "day", 1, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    got, error = stream(gw, department, cap)
    assert got == 0 and error is not None and error.startswith("429"), error
    return to_micros(Decimal(error.split("may cost up to ")[1].split(";")[0].split(",")[0]))


def test_four_streams_that_stall_under_a_time_price_are_cut_at_their_bound_and_leak_nothing(
    timed: Gateway, emulator: OllamaEmulator
) -> None:
    """Priced by the GPU-hour, a stalled call is cut once it has run the time its bound pays
    for (plus a load's wait), long before Ollama's silence times out: charged that time,
    exactly its bound, and no more; its hold and slot come back for the next call."""
    bound = bound_of(timed, CAP)
    departments = [f"p{next(_runs)}-{i}" for i in range(CALLERS)]
    for department in departments:  # room for two calls each: one stalled, one after it
        timed.ledger.save_budget(Budget("default", department, "day", 2 * bound, "USD"))
    assert timed.meter.budgets is not None
    timed.meter.budgets.reload_soon()
    emulator.inject(Fault.STALL, times=CALLERS, after_tokens=SHOWN)
    results = at_once([lambda d=d: stream(timed, d, CAP) for d in departments])
    for got, error in results:
        assert got == SHOWN and error is not None and "busy time it was admitted on" in error
    timed.settle()
    for department in departments:
        (span,) = timed.ledger.latest(SpanFilter(department=department), 5)
        assert (span.status, span.error_type, span.duration_source) == (
            "error",
            "over_cap",
            "measured",
        )
        assert span.output_tokens == SHOWN
        assert span.cost_total == span.cost_compute == bound  # the time it was admitted on
    state = dash(timed)
    assert state["queue"] == {"waiting": 0, "by_department": {}}
    assert [s["in_flight"] for s in state["servers"]] == [0]
    # Each hold came back: the second call's bound fits beside the first's charge.
    results = at_once([lambda d=d: stream(timed, d, CAP) for d in departments])
    assert all(got > 0 and error is None for got, error in results), results
    timed.settle()
    for department in departments:
        spans = timed.ledger.latest(SpanFilter(department=department), 5)
        assert [s.status for s in spans] == ["ok", "error"]
        assert sum(s.cost_total for s in spans) <= 2 * bound


def test_four_whole_answers_that_never_come_give_back_their_holds_and_slots(
    quiet: Gateway, emulator: OllamaEmulator
) -> None:
    """Not streamed, a stalled answer sends nothing at all: each caller gets a 504 after the
    timeout, its span is a timeout that consumed nothing (no byte of an answer came), and its
    hold and slot come back: each department's whole limit admits a call after it."""
    departments = [f"w{next(_runs)}-{i}" for i in range(CALLERS)]
    for department in departments:
        quiet.ledger.save_budget(Budget("default", department, "day", CAP * OUT_PRICE, "USD"))
    assert quiet.meter.budgets is not None
    quiet.meter.budgets.reload_soon()
    emulator.inject(Fault.STALL, times=CALLERS)

    def whole(department: str) -> int:
        client = ollama.Client(host=quiet.url, headers={"X-Ometer-Department": department})
        try:
            client.chat(
                "llama3.1:8b", [{"role": "user", "content": "hi"}], options={"num_predict": CAP}
            )
        except ollama.ResponseError as error:
            return error.status_code
        return 200

    assert at_once([lambda d=d: whole(d) for d in departments]) == [504] * CALLERS
    quiet.settle()
    for department in departments:
        (span,) = quiet.ledger.latest(SpanFilter(department=department), 5)
        assert (span.status, span.error_type, span.http_status) == ("error", "timeout", 504)
        assert (span.output_tokens, span.cost_total) == (0, 0)
    assert [s["in_flight"] for s in dash(quiet)["servers"]] == [0]
    assert at_once([lambda d=d: whole(d) for d in departments]) == [200] * CALLERS
