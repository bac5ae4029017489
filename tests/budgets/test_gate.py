"""Budgets enforced by the meter against the emulator: refusals, rollover, reservations, alerts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import (
    MESSAGE_TOKENS,
    TEMPLATE_TOKENS,
    AlertDispatcher,
    Budget,
    BudgetGate,
    EmailChannel,
    ShownPrompts,
    WebhookChannel,
    deliver,
)
from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT
from ollama_meter.budgets._shown import SPECIAL_TOKENS
from ollama_meter.budgets._template import JOIN_BYTES
from ollama_meter.config import load_settings
from ollama_meter.errors import BudgetExceeded, StreamError
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, Meter, MeteredCall, Opening, Run
from ollama_meter.meter._request import facts_of
from ollama_meter.records import LeaseKey
from ollama_meter.testing import (
    DEFAULT_MODELS,
    EmulatedModel,
    Fault,
    OllamaEmulator,
    expected_counts,
    unreachable_url,
)
from tests.factories import quick_history, token_prices

HELLO = [{"role": "user", "content": "hello there friend"}]
IN, OUT = expected_counts("llama3.1:8b", HELLO)
CALL_COST = IN * 1000 + OUT * 2000  # micro-units at 1000/2000 per 1M tokens
# What a hard budget reserves for such a call with num_predict=OUT: the prompt's bytes plus
# template and message allowance in, OUT out.
BOUND = (len(HELLO[0]["content"].encode()) + TEMPLATE_TOKENS + MESSAGE_TOKENS) * 1000 + OUT * 2000


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_meter(db_url: str, clock: Clock, **settings: Any) -> Meter:
    cfg = load_settings(db_url=db_url, timezone="Europe/Berlin", **settings)
    meter = Meter.from_settings(cfg, source="sdk", clock=clock)
    if not meter.ledger.price_rules():
        meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    return meter


def chat(meter: Meter, tenant: str = "acme", department: str = "sales", **kw: Any) -> Run:
    return meter.chat(
        model="llama3.1:8b",
        messages=HELLO,
        attribution=Attribution(tenant=tenant, department=department),
        options={"num_predict": OUT},
        **kw,
    )


def call(meter: Meter, tenant: str = "acme", department: str = "sales") -> Any:
    run = chat(meter, tenant, department)
    list(run)
    return run.span


def budget(meter: Meter, limit: int, **kw: Any) -> Budget:
    values: dict[str, Any] = {
        "tenant": "acme",
        "department": "sales",
        "period": "month",
        "currency": "USD",
    }
    values.update(kw)
    saved = meter.ledger.save_budget(Budget(limit=limit, **values))
    assert meter.budgets is not None
    meter.budgets.reload_soon()  # see the new budget now, not after the reload interval
    return saved


NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_stream_past_the_admitted_cap_is_cut_there(
    sqlite_url: str, emulator: OllamaEmulator, asynchronous: bool
) -> None:
    """An Ollama that ignores num_predict cannot spend past a hard budget through the SDK."""
    meter = make_meter(sqlite_url, Clock(NOV))
    budget(meter, CALL_COST * 100)
    emulator.inject(Fault.IGNORE_CAP)
    run = meter.chat(
        model="llama3.1:8b",
        messages=HELLO,
        attribution=Attribution(tenant="acme", department="sales"),
        options={"num_predict": 2},
        stream=True,
    )
    got: list[Any] = []

    async def drain() -> None:
        async for part in run:
            got.append(part)

    with pytest.raises(StreamError, match="more than the 2 reply tokens the call was admitted on"):
        asyncio.run(drain()) if asynchronous else got.extend(run)
    assert len(got) == 2  # the piece past the cap is not handed over
    span = run.span
    assert (span.status, span.error_type, span.output_tokens) == ("error", "over_cap", 2)
    assert meter.ledger.latest(SpanFilter(), 1)[0].error_type == "over_cap"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_call_slower_than_its_models_history_is_cut_at_the_time_it_was_admitted_on(
    sqlite_url: str, emulator: OllamaEmulator, asynchronous: bool, stream: bool
) -> None:
    """GPU time is bounded from the model's recent calls (x1.5): a server gone ten times
    slower (a model fallen back to the CPU) ran the call past what the hard budget held for
    it, and four such calls at once spent past the limit. The call is cut when it has run
    as long as it was admitted on, and is charged the time it ran."""
    from ollama_meter.ledger import open_ledger

    open_ledger(sqlite_url).add_price_rule(
        replace(token_prices("llama3.1:*"), gpu_hour=Decimal(3600))  # 1 USD a second
    )
    meter = make_meter(sqlite_url, Clock(NOV))
    meter.ledger.record([quick_history()])
    budget(meter, 10**12)
    emulator.token_latency = 0.5  # 50 times slower than the history
    run = chat(meter, stream=stream)
    got: list[Any] = []

    async def drain() -> None:
        async for part in run:
            got.append(part)

    try:
        with pytest.raises(StreamError, match=r"longer than the [\d.]+ s of busy time it was"):
            asyncio.run(drain()) if asynchronous else got.extend(run)
    finally:
        emulator.token_latency = 0.0
    span = run.span
    assert run.call is not None and run.call.time_cap_ns is not None
    assert (span.status, span.error_type) == ("error", "over_cap")
    assert len(got) < OUT and span.duration_source == "measured"
    assert span.cost_compute > 0  # charged the time it ran, which its bound paid for
    assert meter.ledger.latest(SpanFilter(), 1)[0].error_type == "over_cap"


def test_no_time_cap_when_time_is_not_priced(sqlite_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(sqlite_url, Clock(NOV))
    budget(meter, 10**12)
    emulator.token_latency = 0.05
    try:
        run = chat(meter, stream=True)
        parts = list(run)
    finally:
        emulator.token_latency = 0.0
    assert run.call is not None and run.call.time_cap_ns is None
    assert run.span.status == "ok" and len(parts) == OUT + 1


def _slow_llama(eval_ns: int) -> tuple[EmulatedModel, ...]:
    """The emulator's models, llama3.1:8b generating at ``eval_ns`` a token, and saying so."""
    return tuple(
        replace(m, eval_ns_per_token=eval_ns) if m.name == "llama3.1:8b" else m
        for m in DEFAULT_MODELS
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_warm_call_slower_than_its_models_history_is_charged_at_most_what_its_bound_paid(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """The time cut waits a model load past the busy time a bound pays for (60 s when the
    model's recent calls show no cold load), priced or not. A warm model gone slower used
    that time to generate, said so, and was charged it: 5 times its bound, each call, so
    four at once spent past the limit. A call a hard budget timed is charged at most the
    busy time its bound paid for; its span says what was charged, and a WARNING the rest."""
    from ollama_meter.ledger import open_ledger

    open_ledger(sqlite_url).add_price_rule(
        replace(token_prices("llama3.1:*"), gpu_hour=Decimal(3600))  # 1 USD a second
    )
    with OllamaEmulator(models=_slow_llama(200_000_000), token_latency=0.2) as slow:
        meter = make_meter(sqlite_url, Clock(NOV), ollama_host=slow.url)
        meter.ledger.record([replace(quick_history(), load_duration_ns=0)])  # warm calls only
        budget(meter, 10**12)
        run = meter.chat(
            model="llama3.1:8b",
            messages=HELLO,
            attribution=Attribution(tenant="acme", department="sales"),
            options={"num_predict": 4},
            stream=stream,
        )
        with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
            parts = list(run)
    call, span = run.call, run.span
    assert call is not None and call.paid_ns is not None and call.reservation is not None
    assert span.status == "ok" and len(parts) == (5 if stream else 1)  # not cut: it ended
    assert span.duration_source == "reported"
    assert span.prompt_eval_duration_ns + span.eval_duration_ns == call.paid_ns  # type: ignore[operator]
    assert span.cost_total <= call.reservation.amount
    assert "past the" in caplog.text and "its hard budget paid for" in caplog.text


def test_an_embedding_models_history_leaves_its_calls_time_to_run(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Ollama reports no prompt evaluation time for an embedding (nor its /v1 routes for a
    whole answer): the meter measured it all as generation, so the model's history said a
    prompt token takes 0 ns. Every later embedding was then admitted on no busy time at
    all, charged past its bound, and cut once it had run a model load's time, however
    small the batch. A duration of 0 is no measure of speed."""
    from ollama_meter.ledger import open_ledger

    open_ledger(sqlite_url).add_price_rule(
        replace(token_prices("nomic-embed-text*"), gpu_hour=Decimal(3600))
    )
    meter = make_meter(sqlite_url, Clock(NOV))
    measured = replace(  # an embedding as the meter records it: no reply, all time measured
        quick_history("nomic-embed-text"),
        output_tokens=0,
        prompt_eval_duration_ns=0,
        eval_duration_ns=5_000_000_000,
        load_duration_ns=300_000_000,
    )
    meter.ledger.record([measured])
    budget(meter, 10**12)
    emulator.latency = 0.5  # past the model load (0.3 s) the old bound allowed, far inside the new
    try:
        run = meter.run(
            "embed",
            # Long inputs: with no prompt speed in the history, the bound is the default's
            # per token, so their length sets it (about 77 s; 8.6 s for "hello world" alone was
            # outrun by a CI machine at load average 10). The old bound was the model load.
            {"model": "nomic-embed-text", "input": ["hello world " * 10] * 200},
            attribution=Attribution(tenant="acme", department="sales"),
            stream=False,
        )
        list(run)
    finally:
        emulator.latency = 0.0
    assert run.call is not None and run.call.paid_ns
    assert (run.span.status, run.span.error_type) == ("ok", None)


def test_a_prompt_the_model_adds_itself_is_charged_and_bounds_its_later_calls(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model whose template adds a prompt of its own (a Modelfile SYSTEM) counts tokens no
    request sends, past the bound its calls are admitted on. Each is charged as counted, with
    a warning; once two calls agree, the model's later calls are bounded with those tokens, so
    the call that would cross the budget is refused before it runs (it was admitted before).
    Here no server can say what the model adds (``/api/show`` reaches nothing): learned."""
    hidden = 500
    model = dataclasses.replace(DEFAULT_MODELS[0], template_tokens=hidden)
    with OllamaEmulator(models=[model, *DEFAULT_MODELS[1:]]) as emu:
        monkeypatch.setenv("OLLAMA_HOST", emu.url)
        meter = make_meter(sqlite_url, Clock(NOV))
        meter.shown = ShownPrompts([unreachable_url()])
        cost = (IN + hidden) * 1000 + OUT * 2000
        budget(meter, 2 * cost + BOUND)  # room for a third call's first bound, not for its cost
        with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
            first, second = call(meter), call(meter)
        assert (first.input_tokens, first.cost_total) == (IN + hidden, cost)
        assert second.cost_total == cost
        once, twice = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "ollama_meter.meter"  # not an alert
        ]
        bound_in = BOUND // 1000 - OUT * 2
        past = f"counted {IN + hidden} prompt and {OUT} reply tokens, past the {bound_in}"
        assert past in once and past in twice
        assert "if llama3.1:8b's next call counts past its bound too" in once
        assert f"later bounds for llama3.1:8b add {IN + hidden - bound_in} prompt" in twice
        sent = len(emu.requests)
        with pytest.raises(BudgetExceeded, match=f"may cost up to {cost / 1e6:.6f}"):
            call(meter)
        assert len(emu.requests) == sent


@pytest.mark.parametrize("priced_by", ["tokens", "gpu_hour"])
def test_one_wild_answer_does_not_raise_the_bounds_of_the_calls_after_it(
    sqlite_url: str, emulator: OllamaEmulator, priced_by: str
) -> None:
    """A server that once reports 10^18 prompt tokens, taking as many nanoseconds, is charged
    the prompt its hard budget admitted it on, and no longer than the call took (what its bound paid
    for, if less). The model's later calls are bounded as before: a wild count
    neither becomes the model's hidden prompt nor its prompt speed, which would have every
    later call under a hard budget refused, and so never let an honest answer show."""
    meter = make_meter(sqlite_url, Clock(NOV))
    if priced_by == "gpu_hour":
        rule = meter.ledger.price_rules()[0]
        meter.ledger.add_price_rule(
            replace(rule, id=None, pattern="llama3.1:8b", gpu_hour=Decimal(2))
        )
    budget(meter, 10**16)  # room for the wild call's charge and many after it
    honest = [call(meter) for _ in range(2)]
    emulator.inject(Fault.INFLATE_COUNTS)
    run = chat(meter)
    list(run)
    wild = run.span
    assert run.call is not None
    # Its time is cut to the call's latency (after the load Ollama reported), and to what its
    # bound paid for when the price counts time.
    worked = (wild.latency_ns or 0) - (wild.load_duration_ns or 0)
    charged = worked if run.call.paid_ns is None else min(worked, run.call.paid_ns)
    # No honest server counts past the most its request could (the prompt's bytes, a message's
    # markers, the template, what the model may add itself): such a count is an estimate, and
    # under a hard budget no estimate passes what the call was admitted on, its bound.
    most = run.call.prompt_most()
    assert most == len(HELLO[0]["content"]) + MESSAGE_TOKENS + TEMPLATE_TOKENS + MAX_HIDDEN_PROMPT
    assert run.call.bound is not None and run.call.bound.input_tokens < most
    assert wild.input_tokens == run.call.bound.input_tokens
    assert wild.prompt_eval_duration_ns == charged
    assert meter.budgets is not None
    spent = wild.cost_total + sum(s.cost_total for s in honest)
    small = budget(meter, spent + 2 * max(s.cost_total for s in honest) + BOUND, department="sales")
    after = [call(meter) for _ in range(2)]
    assert [s.status for s in after] == ["ok", "ok"], small


def test_hard_budget_refuses_the_call_that_would_cross_it(
    db_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(db_url, Clock(NOV))
    b = budget(meter, CALL_COST * 2 + BOUND - 1)  # the third call's bound does not fit
    call(meter)
    call(meter)
    sent = len(emulator.requests)
    with pytest.raises(BudgetExceeded) as refused:
        call(meter)
    assert len(emulator.requests) == sent  # Ollama never saw it
    message = str(refused.value)
    assert f"budget {b.id}" in message and "acme/sales" in message and "monthly 2026-11" in message
    assert f"spent {CALL_COST * 2 / 1e6:.6f} of {b.limit / 1e6:.6f} USD" in message
    assert refused.value.exit_code == 3 and refused.value.retry_after > 0
    spans = meter.ledger.latest(SpanFilter(), 10)
    assert [(s.status, s.error_type) for s in spans] == [
        ("rejected", "budget_exceeded"),
        ("ok", None),
        ("ok", None),
    ]
    assert spans[0].cost_total == 0 and spans[0].http_status == 429
    # sent to no server: it names none (and adds no server's capacity to a chargeback)
    assert [s.upstream_host for s in spans] == ["", emulator.url, emulator.url]
    # other departments and tenants are not affected
    call(meter, department="support")
    call(meter, tenant="globex")


def test_periods_roll_over_at_local_midnight(db_url: str, emulator: OllamaEmulator) -> None:
    # 22:59 UTC on 30 Nov is 23:59 in Berlin: still November, still the 30th.
    clock = Clock(datetime(2026, 11, 30, 22, 59, tzinfo=UTC))
    meter = make_meter(db_url, clock)
    # room for one call's bound, then not for another
    budget(meter, BOUND, period="day")
    budget(meter, BOUND, period="month", department="support")
    call(meter)
    call(meter, department="support")
    with pytest.raises(BudgetExceeded, match="daily 2026-11-30"):
        call(meter)
    with pytest.raises(BudgetExceeded, match="monthly 2026-11"):
        call(meter, department="support")
    clock.now = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)  # midnight in Berlin: 1 December
    assert call(meter).status == "ok"
    assert call(meter, department="support").status == "ok"
    with pytest.raises(BudgetExceeded, match="daily 2026-12-01"):
        call(meter)


def test_tenant_wide_and_soft_budgets(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url, Clock(NOV))
    budget(meter, BOUND, department=None)
    budget(meter, CALL_COST // 2, department="support", hard=False)
    call(meter, department="ops")
    with pytest.raises(BudgetExceeded, match="for acme "):
        call(meter, department="sales")
    assert call(meter, tenant="other", department="support").status == "ok"  # soft: alerts only


def test_a_crashed_callers_reservation_expires(db_url: str, emulator: OllamaEmulator) -> None:
    clock = Clock(NOV)
    meter = make_meter(db_url, clock)
    call(meter)
    b = budget(meter, CALL_COST + BOUND * 2 - 1)
    # Another process leased room for a call and died before settling.
    from ollama_meter.ledger import _budgets as store

    def crashed(written: datetime) -> None:  # its lease row, written then by the ledger's clock
        with meter.ledger.write() as conn:
            store.put_reservation(
                conn,
                {
                    "id": "crashed", "budget_id": b.id, "tenant": "acme",
                    "period_start": datetime(2026, 10, 31, 23, tzinfo=UTC),
                    "amount_micros": BOUND, "expires_at": written + timedelta(minutes=15),
                },
            )  # fmt: skip

    with meter.ledger.read() as conn:
        written = store.ledger_now(conn, clock.now)  # PostgreSQL: the server's, not the test's
    crashed(written)
    with pytest.raises(BudgetExceeded, match="calls in flight hold") as refused:
        call(meter)
    assert refused.value.retry_after == 5  # seconds, not the rest of the month
    clock.now = NOV + timedelta(minutes=16)
    if db_url.startswith("postgresql"):  # its server's clock cannot be moved on: the row ages
        crashed(written - timedelta(minutes=16))
    assert call(meter).status == "ok"


def test_department_budgets_from_the_environment(db_url: str, emulator: OllamaEmulator) -> None:
    limit = Decimal(BOUND) / 1_000_000
    meter = make_meter(
        db_url, Clock(NOV), department_budgets=json.dumps({"sales": {"daily": str(limit)}})
    )
    call(meter, tenant="acme")
    call(meter, tenant="globex")  # every tenant's sales has its own allowance
    with pytest.raises(BudgetExceeded, match="budget .* for acme/sales"):
        call(meter, tenant="acme")
    (env,) = meter.ledger.budgets()
    assert (env.tenant, env.department, env.source) == ("*", "sales", "env")
    # the same variable again changes nothing; a new value replaces the old budget
    make_meter(db_url, Clock(NOV), department_budgets=json.dumps({"sales": {"daily": str(limit)}}))
    assert [b.id for b in meter.ledger.budgets()] == [env.id]
    make_meter(db_url, Clock(NOV), department_budgets='{"sales": {"monthly": 100}}')
    assert [(b.period, b.limit) for b in meter.ledger.budgets()] == [("month", 100_000_000)]


class Receiver:
    """A real HTTP server that records JSON posts; can be told to fail."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail = 0
        self.delay = 0.0  # seconds to take before answering
        self.posted = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.posts.append(json.loads(body))
                receiver.posted.set()
                time.sleep(receiver.delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_webhook_gets_exactly_one_alert_per_threshold(
    db_url: str, emulator: OllamaEmulator, receiver: Receiver
) -> None:
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    b = budget(meter, CALL_COST * 4, hard=False, thresholds=(25, 50, 90, 100))
    for _ in range(5):
        call(meter)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(600.0)
    assert [p["threshold"] for p in receiver.posts] == [25, 50, 90, 100]
    first = receiver.posts[0]
    assert (
        first["budget_id"] == b.id and first["tenant"] == "acme" and first["department"] == "sales"
    )
    assert first["period"] == "month" and first["period_label"] == "2026-11"
    assert first["period_start"] == "2026-10-31T23:00:00Z"
    assert first["spent"] == f"{CALL_COST / 1e6:.6f}" and first["limit"] == f"{b.limit / 1e6:.6f}"
    assert first["currency"] == "USD" and "crossed 25%" in first["text"]
    rows = meter.ledger.alerts()
    assert [(r.threshold, r.delivered, r.deliveries["webhook"]) for r in rows] == [
        (t, True, f"sent to {receiver.url.removesuffix('/hook')}") for t in (25, 50, 90, 100)
    ]


def test_failing_webhook_is_retried_recorded_and_retried_by_the_next_run(
    db_url: str, emulator: OllamaEmulator, receiver: Receiver
) -> None:
    receiver.fail = 3  # more than one run's attempts
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    meter.budgets.alerts.backoff = 0.01
    budget(meter, CALL_COST * 10, thresholds=(5,))
    assert call(meter).status == "ok"  # the call never waits for the channel
    assert meter.budgets.alerts.flush(600.0)
    (row,) = meter.ledger.alerts()
    assert (
        not row.delivered and row.deliveries["webhook"].startswith("failed:") and row.attempts == 1
    )
    assert row.deliveries["log"] == "sent"
    later = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)  # a later run
    assert later.budgets is not None and later.budgets.alerts is not None
    assert later.budgets.alerts.flush(600.0)
    (row,) = later.ledger.alerts()
    assert row.delivered and row.attempts == 2
    assert [p["threshold"] for p in receiver.posts] == [5]


def test_an_alert_given_up_on_says_so_and_budget_status_shows_it(
    db_url: str, emulator: OllamaEmulator, receiver: Receiver, cli: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """After five runs an undelivered alert was dropped in silence: no log line, and nothing
    an admin could see showed that no channel ever got it."""
    from ollama_meter.budgets._alerts import MAX_RUNS

    receiver.fail = 10**6  # the webhook never takes it
    runs = [make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)]
    assert runs[0].budgets is not None and runs[0].budgets.alerts is not None
    runs[0].budgets.alerts.backoff = 0.001
    b = budget(runs[0], CALL_COST * 10, thresholds=(5,))
    call(runs[0])
    with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
        for run in range(MAX_RUNS + 1):
            if run:  # a later run retries what is undelivered as it starts
                runs.append(make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url))
            gate = runs[-1].budgets
            assert gate is not None and gate.alerts is not None
            gate.alerts.backoff = 0.001
            assert gate.alerts.flush(600.0)
    (row,) = runs[0].ledger.alerts()
    assert not row.delivered and row.attempts == MAX_RUNS  # the sixth run left it be
    given_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert given_up == [
        f"giving up on budget alert {row.id} after {MAX_RUNS} runs, not delivered by webhook: "
        f"{row.text()} (`ometer budget status` lists it)"
    ]
    shown = cli("budget", "status", "--db", db_url)
    assert shown.code == 0
    assert (
        f"alert {row.id}: budget {b.id} (acme/sales) crossed 5% in month 2026-11, not delivered "
        f"by webhook after {MAX_RUNS} of {MAX_RUNS} runs; given up"
    ) in " ".join(shown.stdout.split())
    (status,) = json.loads(cli("budget", "status", "--json", "--db", db_url).stdout)
    (alert,) = status["undelivered_alerts"]
    assert (alert["id"], alert["runs"], alert["given_up"]) == (row.id, MAX_RUNS, True)
    assert alert["deliveries"]["webhook"].startswith("failed:")


def test_an_alert_being_delivered_is_not_sent_again_by_a_process_starting_meanwhile(
    db_url: str, emulator: OllamaEmulator, receiver: Receiver
) -> None:
    """Every process retries undelivered alerts as it starts: one that started while another
    was still delivering an alert (a slow webhook) sent it a second time."""
    receiver.delay = 1.0
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    budget(meter, CALL_COST * 10, thresholds=(5,))
    call(meter)
    assert receiver.posted.wait(600)  # on its way, not answered yet (bounds for a hang)
    others = [make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url) for _ in range(2)]
    for each in (meter, *others):
        assert each.budgets is not None and each.budgets.alerts is not None
        assert each.budgets.alerts.flush(600.0)
    assert [p["threshold"] for p in receiver.posts] == [5]
    (row,) = meter.ledger.alerts()
    assert row.delivered and row.attempts == 1


@pytest.mark.parametrize("answer", ["sent", "503", "refused"])
def test_a_webhooks_secret_path_never_reaches_the_ledger_or_the_log(
    receiver: Receiver, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Slack webhook's path is its credential: where an alert went is said by host only."""
    from ollama_meter.budgets import Alert
    from ollama_meter.testing import unreachable_url

    secret = "T0SECRET/B0SECRET/xoxb-s3cr3t"
    refusing = int(unreachable_url().rsplit(":", 1)[1])  # held: nothing can listen there
    port = refusing if answer == "refused" else receiver.server.server_port
    receiver.fail = 3 if answer == "503" else 0
    url = f"http://hook:pw@127.0.0.1:{port}/services/{secret}?token={secret}"
    alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 90, 100, "EUR")
    outcome, delivered = deliver(alert, [WebhookChannel(url)], sleep=lambda _: None)
    assert delivered == (answer == "sent")
    expected = {
        "sent": f"sent to http://127.0.0.1:{port}",
        "503": f"failed: http://127.0.0.1:{port} answered 503 Service Unavailable",
        "refused": f"failed: ConnectError posting to http://127.0.0.1:{port}",
    }
    assert outcome["webhook"] == expected[answer]
    assert "SECRET" not in caplog.text and "s3cr3t" not in caplog.text and "pw@" not in caplog.text


def test_email_alert_over_a_real_smtp_server(sqlite_url: str) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Collect(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            received.append(message)

    from ollama_meter.testing import unused_port

    port = unused_port()
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        from ollama_meter.budgets import Alert

        alert = Alert(
            1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 90_000_000, 100_000_000, "EUR"
        )
        channel = EmailChannel(
            "127.0.0.1",
            controller.server.sockets[0].getsockname()[1],
            sender="ometer@example.org",
            recipients=["it@example.org", "cfo@example.org"],
        )
        outcome, delivered = deliver(alert, [channel])
    finally:
        controller.stop()
    assert delivered and outcome["email"] == "sent to it@example.org, cfo@example.org"
    (message,) = received
    assert message["Subject"] == "[ometer] acme/sales budget at 90%"
    assert (
        "spent 90.000000 of 100.000000 EUR (90% used)" in message.get_payload(decode=True).decode()
    )


def test_a_channel_that_keeps_failing_never_raises() -> None:
    from ollama_meter.budgets import Alert

    alert = Alert(1, 7, "acme", None, "day", "2026-11-10", NOV, 100, 1, 1, "USD")
    waits: list[float] = []
    outcome, delivered = deliver(
        alert, [WebhookChannel("http://127.0.0.1:1/x", timeout=0.5)], sleep=waits.append
    )
    assert not delivered and outcome["webhook"].startswith("failed:") and len(waits) == 2
    assert waits[1] > waits[0]


def test_gate_without_hard_budgets_reserves_nothing(sqlite_url: str) -> None:
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(sqlite_url)
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), alerts=AlertDispatcher(ledger, []))
    assert (
        gate.admit(call_id="x", tenant="t", department="d", estimate=Estimate(1, "USD"), now=NOV)
        is None
    )
    assert gate.retry_undelivered() == 0


def test_try_open_admits_in_memory_or_hands_the_call_to_a_thread(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """What an event loop may do in place (issue 11 item 8); None means nothing happened."""
    cfg = load_settings(db_url=db_url, timezone="Europe/Berlin", ollama_host=emulator.url)
    meter = Meter.from_settings(cfg, source="gateway", clock=Clock(NOV))  # leases a quarter
    meter.chained = False  # Ollama behind it, as a gateway asks as it starts: shared leases
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    budget(meter, BOUND * 8)
    meter.keep_fresh()  # a server: a background task reloads prices and budgets
    sales = Attribution(tenant="acme", department="sales")
    support = Attribution(tenant="acme", department="support")
    request = {"model": "llama3.1:8b", "messages": HELLO, "options": {"num_predict": OUT}}
    facts = facts_of("chat", request)

    def try_open(who: Attribution) -> MeteredCall | None:
        return meter.try_open(Opening("chat", "llama3.1:8b", False, who, facts))

    def open_(who: Attribution) -> MeteredCall:
        return meter.open(Opening("chat", "llama3.1:8b", False, who, facts))

    assert try_open(support) is None  # prices and budgets are read again at the first call
    first = open_(sales)  # from a thread: loads prices, budgets and history, leases a slice
    assert first.reservation is not None
    free = try_open(support)  # no budget covers it: decided in memory
    assert free is not None and free.reservation is None
    in_memory = []
    while (opened := try_open(sales)) is not None:
        assert opened.reservation is not None
        in_memory.append(opened)
    assert 1 <= len(in_memory) < 8  # the slice held a few bounds, not the whole budget
    renewed = open_(sales)  # the slice ran short: renewed in the ledger, from a thread
    assert renewed.reservation is not None
    calls = [first, free, *in_memory, renewed]
    for call_ in calls:
        meter.close(call_)
    recorded = meter.ledger.latest(SpanFilter(), 50)
    assert len(recorded) == len(calls) and {s.status for s in recorded} == {"ok"}
    meter.close_upstream()


def test_a_changed_limit_renews_the_same_lease_not_a_second_one(db_url: str) -> None:
    """Lowering (or raising) a limit while a gateway holds a lease: its money is not stranded."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(db_url)
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=100_000_000, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0)
    month = datetime(2026, 11, 1, tzinfo=UTC)

    def admit(call: str, amount: int) -> Any:
        return gate.admit(
            call_id=call,
            tenant="acme",
            department="sales",
            estimate=Estimate(amount, "USD"),
            now=NOV,
        )

    in_flight = admit("a", 1_000_000)  # leases a quarter of the room: 25
    ledger.save_budget(replace(saved, limit=30_000_000))
    second = admit("b", 10_000_000)  # fits 30 with "a" in flight; nothing was spent
    with ledger.budget_snapshot() as store:
        assert (
            store.held(LeaseKey(saved.id or 0, "acme", month), NOV) == 11_000_000
        )  # one row: a + b
    gate.settle(in_flight)
    gate.settle(second)
    ledger.save_budget(replace(saved, limit=12_000_000))
    assert admit("c", 12_000_000) is not None  # nothing in flight holds anything any more


def _held(ledger: Any, budget: Budget, now: datetime) -> int:
    with ledger.budget_snapshot() as store:
        return int(
            store.held(LeaseKey(budget.id or 0, "acme", datetime(2026, 11, 1, tzinfo=UTC)), now)
        )


def _expires_at(ledger: Any) -> datetime:
    """When the lease row expires, by the ledger's clock: the test's on SQLite, the server's on
    PostgreSQL (where waiting for a renewal past it takes real time)."""
    from sqlalchemy import func, select

    from ollama_meter.ledger.models import BUDGET_RESERVATIONS

    with ledger.read() as conn:
        expires_at: datetime = conn.execute(
            select(func.max(BUDGET_RESERVATIONS.c.expires_at))
        ).one()[0]
        return expires_at


def _wait_for(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"still not {what} after 10 s")


def test_a_call_longer_than_its_reservation_lives_keeps_its_hold(db_url: str) -> None:
    """A long reply (a slow server) must not lose its reservation mid-call: another process
    would spend it, and both calls together overshoot the limit."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(db_url)
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    # On PostgreSQL the rows expire by the server's real clock: room for a busy machine to
    # be late with a renewal (on SQLite the test's clock decides).
    ttl = timedelta(seconds=0.8 if db_url.startswith("sqlite") else 4)
    mine, other = (
        BudgetGate(ledger, tz=ZoneInfo("UTC"), reservation_ttl=ttl, ttl=0) for _ in range(2)
    )

    def admit(gate: BudgetGate, at: datetime) -> Any:
        estimate = Estimate(6_000_000, "USD")
        return gate.admit(call_id="c", tenant="acme", department="sales", estimate=estimate, now=at)

    long_call = admit(mine, NOV)
    first_expiry = NOV + ttl
    written = _expires_at(ledger)  # the same on SQLite; by the server's clock on PostgreSQL
    # The row is renewed while the call runs, past the moment it would have expired.
    _wait_for(lambda: _held(ledger, saved, written) == 6_000_000, "renewed")
    with pytest.raises(BudgetExceeded, match="calls in flight hold 6.000000"):
        admit(other, first_expiry)
    mine.settle(long_call)
    assert _held(ledger, saved, first_expiry) == 0
    other.settle(admit(other, first_expiry))


def test_a_gateway_gone_quiet_gives_its_idle_lease_back(db_url: str) -> None:
    """Not only when its next call comes: another gateway may need the room now."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(db_url)
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    quiet = [0.0]  # seconds the gateway has been quiet: the test's, not the machine's
    gate = BudgetGate(
        ledger,
        tz=ZoneInfo("UTC"),
        lease_share=0.25,
        idle_release=0.2,
        ttl=0,
        clock=lambda: quiet[0],
    )
    estimate = Estimate(1_000_000, "USD")
    call = gate.admit(call_id="c", tenant="acme", department="sales", estimate=estimate, now=NOV)
    gate.settle(call)
    assert _held(ledger, saved, NOV) == 2_500_000  # a quarter of the room, kept for more calls
    quiet[0] = 1.0  # past idle_release, with no call since
    _wait_for(lambda: _held(ledger, saved, NOV) == 0, "given back")


def test_a_gate_whose_ledger_was_disposed_of_stops_keeping_its_leases(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown disposes of the ledger while a call still holds a lease: the keeper thread
    ends without opening the ledger again (it logged "renewing ... failed" into whatever
    ran next, against a database already gone); the row expires as a crash's would."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(sqlite_url)
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), reservation_ttl=timedelta(seconds=0.4), ttl=0)
    estimate = Estimate(1_000_000, "USD")
    gate.admit(call_id="c", tenant="acme", department="sales", estimate=estimate, now=NOV)
    keeper = next(t for t in threading.enumerate() if t.name == "ometer-budget-leases")
    with caplog.at_level("WARNING", logger="ollama_meter"):
        ledger.dispose()
        keeper.join(timeout=60)  # a bound for a hang: it ends at its next round, in 0.1 s
    assert not keeper.is_alive()
    assert caplog.messages == []


@pytest.mark.parametrize("give_back", [True, False])
def test_closing_every_gate_ends_their_keepers_and_gives_back_what_is_idle(
    sqlite_url: str, give_back: bool
) -> None:
    """A gate nobody closed (a test's, a discarded client's) renewed its leases for ever: in
    the suite, into the next test's log, against the database that test's end dropped.
    ``close_gates`` ends every keeper, a call still in flight or not; idle leases go back
    unless told not to (their rows then expire)."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate, close_gates
    from ollama_meter.ledger import Ledger

    ledger = Ledger(sqlite_url)
    for department in ("sales", "legal"):
        ledger.save_budget(
            Budget(
                tenant="acme", department=department, period="month", limit=10**7, currency="USD"
            )
        )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=0)
    estimate = Estimate(1_000, "USD")
    busy = gate.admit(call_id="busy", tenant="acme", department="sales", estimate=estimate, now=NOV)
    assert busy is not None
    idle = gate.admit(call_id="idle", tenant="acme", department="legal", estimate=estimate, now=NOV)
    assert idle is not None
    gate.settle(idle)
    keeper = next(t for t in threading.enumerate() if t.name == "ometer-budget-leases")
    assert _leased_budgets(ledger) == {1, 2}  # sales's, legal's
    close_gates(give_back=give_back)
    if give_back:  # its keeper stays while a call holds a lease: it ends once the call does
        keeper.join(timeout=0.5)
        assert keeper.is_alive() and _leased_budgets(ledger) == {1}
        gate.settle(busy)
    keeper.join(timeout=60)  # a bound for a hang: it ends at once
    assert not keeper.is_alive()
    assert _leased_budgets(ledger) == (set() if give_back else {1, 2})


def _leased_budgets(ledger: Any) -> set[int]:
    from sqlalchemy import text

    with ledger.engine.connect() as conn:
        return set(conn.execute(text("SELECT budget_id FROM budget_reservations")).scalars())


def test_a_budget_check_that_fails_unexpectedly_still_leaves_the_calls_span(
    sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong checking a hard budget (a bug, not the caller's), the call is not
    made and its span is written: a failure, never a lost span."""
    meter = make_meter(sqlite_url, Clock(NOV))
    budget(meter, CALL_COST * 100)
    assert meter.budgets is not None

    def broken(**_: Any) -> None:
        raise RuntimeError("a bug in the gate")

    monkeypatch.setattr(meter.budgets, "admit", broken)  # a fault injected into the collaborator
    with pytest.raises(RuntimeError, match="a bug in the gate"):
        call(meter)
    assert emulator.requests_to("/api/chat") == []
    (span,) = meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.error_type) == ("error", "RuntimeError")
    assert span.error_message == "the budget check failed: a bug in the gate"


def test_budget_periods_follow_a_zone_the_ledger_was_moved_to_while_running(db_url: str) -> None:
    """``ometer db rollup --zone`` moves the ledger's midnights. A process running meanwhile (an
    app on the Python API, a gateway not stopped) kept cutting its budget periods, and keying
    its leases and alerts, at the zone it started with, while its own prices, ``budget status``
    and every process started since cut at the new one: blind to each other's holds, together
    they could admit twice a hard limit. The zone is read again with the budgets."""
    from ollama_meter.budgets import Estimate, budget_status
    from ollama_meter.ledger import rebuild

    meter = make_meter(db_url, Clock(NOV))
    ledger = meter.ledger
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    gate = meter.budgets
    assert gate is not None and saved.id is not None
    at = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)  # November in Berlin, October in UTC

    def admit() -> Any:
        return gate.admit(
            call_id="c", tenant="acme", department="sales", estimate=Estimate(10, "USD"), now=at
        )

    berlin = admit()
    assert berlin.keys == (LeaseKey(saved.id, "acme", datetime(2026, 10, 31, 23, tzinfo=UTC)),)
    gate.settle(berlin)
    rebuild(ledger.write, ledger.read, zone="UTC")
    gate.reload_soon()  # as its budgets are, every few seconds
    utc = admit()
    october = datetime(2026, 10, 1, tzinfo=UTC)
    assert utc.keys == (LeaseKey(saved.id, "acme", october),)
    [status] = budget_status(ledger, tz=ZoneInfo("UTC"), now=at)
    assert status.window.start == october and status.held == 10
    gate.settle(utc)
    meter.close_upstream()


def test_a_lease_is_written_again_when_the_wall_clock_steps_past_its_expiry(db_url: str) -> None:
    """Other processes judge a lease row by the wall clock (its ``expires_at``); this one by its
    monotonic clock. When the wall clock stepped forward (NTP after a suspend, a VM resumed) the
    gateway kept admitting against a row the ledger already took as expired: another gateway
    saw no hold, leased the same room, and together they admitted past the limit."""
    from zoneinfo import ZoneInfo

    from ollama_meter.budgets import Estimate
    from ollama_meter.ledger import Ledger

    ledger = Ledger(db_url)
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10_000_000, currency="USD")
    )
    mine = BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.5, ttl=0, clock=lambda: 0.0)
    other = BudgetGate(ledger, tz=ZoneInfo("UTC"), ttl=0, clock=lambda: 0.0)
    later = NOV + timedelta(days=1)  # the same month: the same lease

    def admit(gate: BudgetGate, call: str, at: datetime, amount: int) -> Any:
        estimate = Estimate(amount, "USD")
        return gate.admit(
            call_id=call, tenant="acme", department="sales", estimate=estimate, now=at
        )

    admit(mine, "a", NOV, 1_000_000)  # leases half the room: 5
    assert _held(ledger, saved, NOV) == 5_000_000
    admit(mine, "b", later, 1_000_000)  # the wall clock stepped a day on
    assert _held(ledger, saved, later) == 5_500_000  # "a" and half the 9 left
    with pytest.raises(BudgetExceeded):
        admit(other, "c", later, 5_000_000)  # it was admitted: the room looked free
    assert admit(other, "d", later, 4_500_000) is not None


def test_a_flood_of_tenant_names_under_an_each_tenant_budget_keeps_the_alert_watch_bounded(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open gateway takes any X-Ometer-Tenant: a budget for each tenant watched one spend
    per name ever sent, in memory for as long as the process ran. The watches read their bound
    at each keep: at its 1,000 the flood was 2,010 ledger reads (162 s on a busy machine, the
    third slowest test); at 16 the same sweeps bound a flood of 42."""
    from ollama_meter.budgets import BudgetGate, _leases
    from ollama_meter.ledger import open_ledger
    from ollama_meter.records import EACH_TENANT, Budget

    monkeypatch.setattr(_leases, "MAX_WATCHES", 16)
    bound = _leases.MAX_WATCHES
    ledger = open_ledger(sqlite_url)
    ledger.save_budget(
        Budget(tenant=EACH_TENANT, department=None, limit=10**9, period="day", currency="USD")
    )
    gate = BudgetGate(ledger, tz=ZoneInfo("UTC"))
    for n in range(bound * 2 + 10):
        gate.check_alerts(f"t{n}", "sales", NOV, cost=1)
    assert len(gate._watch) <= bound
    assert gate.check_alerts("t0", "sales", NOV, cost=1) == []  # a watch gone is read again


def test_calls_a_process_admits_before_it_learned_a_models_hidden_prompt_stay_within_the_limit(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Four `ometer chat` runs (four meters, as four processes), all admitted before any
    settles. The model's template writes 500 words of its own into every prompt: learned
    only from calls past their bound, each run was admitted on a bound 500 tokens short and
    the four spent past the limit. /api/show names the template, which bounds them from the
    first call: of room for two bounds, two answer and two are refused."""
    hidden = 500
    model = dataclasses.replace(DEFAULT_MODELS[0], template_tokens=hidden)
    # What its template writes beyond the chat's text, a token a byte: its 500 words and
    # their spaces, a space after the system prompt and after each of the (at most) two
    # messages, two bytes a message where Ollama joins them, a BOS token or so; past the
    # allowance every bound has for a template and a message.
    written = (2 * hidden - 1) + 1 + 2 * (1 + JOIN_BYTES) + SPECIAL_TOKENS
    shown_bound = BOUND + (written - TEMPLATE_TOKENS - MESSAGE_TOKENS) * 1000
    assert shown_bound == BOUND + 974_000
    with OllamaEmulator(models=[model, *DEFAULT_MODELS[1:]]) as emu:
        monkeypatch.setenv("OLLAMA_HOST", emu.url)
        meters = [make_meter(sqlite_url, Clock(NOV)) for _ in range(4)]
        limit = 2 * shown_bound + 1
        budget(meters[0], limit)
        runs = [chat(m) for m in meters]
        for m in meters:
            assert m.budgets is not None
            m.budgets.reload_soon()
        answered, iterators = [], []
        for run in runs:  # each admitted before any has settled
            iterator = iter(run)
            try:
                next(iterator)
            except BudgetExceeded:
                continue
            answered.append(run)
            iterators.append(iterator)
        for iterator in iterators:
            list(iterator)
    assert len(answered) == 2
    for run in answered:
        assert run.call is not None and run.call.bound is not None
        assert run.span.input_tokens == IN + hidden <= run.call.bound.input_tokens
    spent = sum(r.span.cost_total for r in answered)
    assert spent <= limit, f"spent {spent} of {limit}"
    assert "past the" not in caplog.text
