"""A model's own prompt (a Modelfile SYSTEM) is in a hard budget's bound from the first call.

It is counted in ``prompt_eval_count`` though no request sends it. Learned only from calls
past their bound, every ``ometer chat`` (one call a process) was charged past its bound by
it: four concurrent runs spent 4.3 times the limit. ``/api/show`` says it before the call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import MESSAGE_TOKENS, ShownPrompts
from ollama_meter.budgets._shown import SHOW_LIMIT, hidden_tokens
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution
from ollama_meter.records import MAX_TOKENS
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator
from tests._raw_http import DRIP_S, RawServer, dripping
from tests.budgets.test_gate import BOUND, CALL_COST, IN, NOV, Clock, budget, chat, make_meter

SYSTEM = " ".join(f"rule{n}" for n in range(500))  # 500 words: 500 tokens to the emulator
HIDDEN = len(SYSTEM.encode()) + MESSAGE_TOKENS  # what the bound adds: a token a byte at most
SHOWN_BOUND = BOUND + HIDDEN * 1000  # micro-units, at 1000 a million prompt tokens
MODEL = dataclasses.replace(DEFAULT_MODELS[0], system=SYSTEM)


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Any:
    with OllamaEmulator(models=[MODEL, *DEFAULT_MODELS[1:]]) as emulator:
        monkeypatch.setenv("OLLAMA_HOST", emulator.url)
        yield emulator


def test_concurrent_runs_each_admitted_before_any_settled_stay_within_the_limit(
    sqlite_url: str, emu: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Four `ometer chat` runs (four meters, as four processes), all admitted before any
    settles, against room for two bounds: two answer, two are refused, no overshoot."""
    meters = [make_meter(sqlite_url, Clock(NOV)) for _ in range(4)]
    limit = 2 * SHOWN_BOUND + 1
    budget(meters[0], limit)
    runs = [chat(m) for m in meters]
    for m in meters:
        assert m.budgets is not None
        m.budgets.reload_soon()
    answered, iterators, refused = [], [], 0
    for run in runs:
        iterator = iter(run)
        try:
            next(iterator)
        except BudgetExceeded:
            refused += 1
        else:
            answered.append(run)
            iterators.append(iterator)
    for iterator in iterators:
        list(iterator)
    assert (len(answered), refused) == (2, 2)
    for run in answered:
        assert run.span.input_tokens == IN + 500  # the model's SYSTEM was sent, and counted
        assert run.span.cost_total == CALL_COST + 500 * 1000
    assert sum(r.span.cost_total for r in answered) <= limit
    assert "past the" not in caplog.text  # no call counted past the bound it was admitted on
    assert len(emu.requests_to("/api/show")) == 4  # each process asked once


def test_the_model_is_asked_about_once_a_minute_and_only_under_a_hard_budget(
    sqlite_url: str, emu: OllamaEmulator
) -> None:
    meter = make_meter(sqlite_url, Clock(NOV))
    for _ in range(2):
        list(chat(meter))
    assert emu.requests_to("/api/show") == []  # no hard budget: nothing to bound
    budget(meter, 10**12)
    for _ in range(3):
        list(chat(meter))
    assert len(emu.requests_to("/api/show")) == 1
    spans = meter.ledger.latest(SpanFilter(), 10)
    assert [s.input_tokens for s in spans] == [IN + 500] * 5


def test_a_request_with_its_own_system_message_is_sent_without_the_models(
    sqlite_url: str, emu: OllamaEmulator
) -> None:
    """Ollama sends the Modelfile SYSTEM only to a chat with none of its own (the bound
    still allows for it: a bound, not a count)."""
    meter = make_meter(sqlite_url, Clock(NOV))
    budget(meter, 10**12)
    run = meter.chat(
        model=MODEL.name,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        attribution=Attribution(tenant="acme", department="sales"),
        stream=False,
    )
    list(run)
    assert run.span.input_tokens == 3


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    shown=JSON
    | st.fixed_dictionaries(
        {"system": st.text(max_size=200)},
        optional={
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant"]), "content": st.text()},
                    optional={"images": st.lists(st.just("aW1n"), max_size=2)},
                ),
                max_size=3,
            )
        },
    )
)
def test_whatever_show_answers_the_bound_is_a_count_within_what_a_span_can_hold(shown: Any) -> None:
    tokens = hidden_tokens(shown)
    assert 0 <= tokens <= MAX_TOKENS
    system = shown.get("system") if isinstance(shown, dict) else None
    if isinstance(system, str) and system:
        assert tokens >= len(system.encode()) + MESSAGE_TOKENS
    if isinstance(shown, dict) and isinstance(shown.get("messages"), list):
        for message in shown["messages"]:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                assert tokens >= len(message["content"].encode()) + MESSAGE_TOKENS


def answer(status: str, body: bytes, kind: bytes = b"application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: ".encode() + kind
    return head + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize(
    ("said", "tokens"),
    [
        (answer("200 OK", json.dumps({"system": "héllo"}).encode()), 6 + MESSAGE_TOKENS),
        (answer("200 OK", b"{}"), 0),
        (answer("404 Not Found", b'{"error":"model \'m\' not found"}'), 0),  # not there
        (answer("404 Not Found", b"404 page not found", b"text/plain"), None),  # no such route
        (answer("500 Internal Server Error", b'{"error":"boom"}'), None),
        (answer("200 OK", b"{not json"), None),
        (answer("200 OK", b'{"system": "' + b"x" * (SHOW_LIMIT + 10) + b'"}'), MAX_TOKENS),
        (b"", None),  # hung up
    ],
    ids=["system", "none", "missing", "no-route", "error", "garbled", "huge", "hangup"],
)
def test_what_a_server_answers_to_show(said: bytes, tokens: int | None) -> None:
    server = RawServer(lambda: said)
    try:
        assert ShownPrompts([server.url]).read("m") == tokens
    finally:
        server.close()


def test_the_most_of_every_server_counts_and_one_that_cannot_say_is_left_out() -> None:
    small = RawServer(lambda: answer("200 OK", b'{"system": "ab"}'))
    large = RawServer(lambda: answer("200 OK", b'{"system": "abcdef"}'))
    broken = RawServer(lambda: answer("503 Service Unavailable", b""))
    try:
        shown = ShownPrompts([small.url, broken.url, large.url, small.url])
        assert shown.read("m") == 6 + MESSAGE_TOKENS
        assert shown.read("m") == 6 + MESSAGE_TOKENS  # kept: asked once
        assert (small.calls, large.calls, broken.calls) == (1, 1, 1)
    finally:
        for server in (small, large, broken):
            server.close()


def test_a_server_that_drips_its_answer_is_given_up_on_in_time() -> None:
    server = dripping(b" ", lambda path: b"{}")
    try:
        began = time.monotonic()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert ShownPrompts([url], timeout=0.5).read("m") is None
        assert time.monotonic() - began < DRIP_S  # a hang guard: given up before the drip ends
    finally:
        server.shutdown()


def test_no_server_saying_is_asked_again_soon_not_at_every_call() -> None:
    now = [0.0]
    server = RawServer(lambda: answer("500 Internal Server Error", b""))
    try:
        shown = ShownPrompts([server.url], clock=lambda: now[0])
        assert shown.read("m") is None
        assert shown.read("m") is None
        assert server.calls == 1
        now[0] += 10
        assert shown.read("m") is None
        assert server.calls == 2
    finally:
        server.close()


def test_no_show_answer_falls_back_to_what_calls_showed(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that cannot say (here: the lookup goes nowhere) leaves the learned bound."""
    caplog.set_level(logging.WARNING)
    with OllamaEmulator(models=[MODEL, *DEFAULT_MODELS[1:]]) as emu:
        meter = make_meter(sqlite_url, Clock(NOV), ollama_host=emu.url)
        meter.shown = ShownPrompts(["http://127.0.0.1:9"])
        budget(meter, 10**12)
        list(chat(meter))
    assert "counted" in caplog.text and "past the" in caplog.text


class _HeldTogether(RawServer):
    """Holds its request until ``met``'s other servers hold theirs too, then hangs up: only
    servers asked at once ever meet (asked in turn, the first waits alone until ``met``
    breaks, well before the caller's timeout)."""

    def __init__(self, met: threading.Barrier) -> None:
        self.met = met
        super().__init__(lambda: b"", threaded=True)

    def reply(self, head: bytes, body: bytes) -> bytes:
        with contextlib.suppress(threading.BrokenBarrierError):
            self.met.wait()
        return b""


def test_servers_are_asked_at_once_so_hung_ones_cost_one_timeout() -> None:
    met = threading.Barrier(3, timeout=10)
    hung = [_HeldTogether(met) for _ in range(3)]
    told = RawServer(lambda: answer("200 OK", b'{"system": "abc"}'))
    try:
        # A timeout past the meeting's: asked in turn, the first server would wait alone.
        shown = ShownPrompts([*(server.url for server in hung), told.url], timeout=20)
        assert shown.read("m") == 3 + MESSAGE_TOKENS
        assert not met.broken and met.n_waiting == 0  # the three were held at once
        assert [server.calls for server in hung] == [1, 1, 1]
    finally:
        for server in (told, *hung):
            server.close()
