"""A call through a metering gateway is one call in its ledger, however it fails.

The gateway records every request it is sent as a call (DESIGN §10: every failure is a span
too), and retries its own upstream within that one span. An ometer client in front of it
(``ometer chat``, the Python API, another gateway) that sent the call again after an answer
the gateway recorded (a rate limit's 429 with a short ``Retry-After``, Ollama's 503 relayed)
made each attempt a call of its own in the gateway's ledger: one user call, three spans, and
Ollama asked nine times. Now an answer that names a gateway's span of the call is final: the
caller is told what the gateway said, and when to try again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter._names import origin_of
from ollama_meter.budgets import Budget, BudgetGate, budget_status
from ollama_meter.errors import (
    LedgerError,
    RateLimited,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from ollama_meter.gateway import _app
from ollama_meter.gateway._rates import RateLimits
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import Journal
from ollama_meter.meter import utc_now
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.records import Limit
from ollama_meter.testing import Fault, OllamaEmulator
from tests.factories import make_span, token_prices
from tests.gateway.conftest import Gateway
from tests.integrity.test_journal_lines import _no_prices

HI = [{"role": "user", "content": "hi"}]
MODEL = "llama3.1:8b"
S = 10**9


class _Minute:
    """The gateways' clock for their rate limits: a minute goes by when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def minute(monkeypatch: pytest.MonkeyPatch) -> _Minute:
    clock = _Minute()
    monkeypatch.setattr(_app, "RateLimits", lambda: RateLimits(clock=clock))
    return clock


def _over_the_limit_soon(client: MeteredClient, minute: _Minute) -> None:
    """The limit's one call of the minute, then the minute all but over: the next call is
    refused with ``Retry-After: 1``, which the client's retry policy would wait for."""
    client.chat(MODEL, HI)
    minute.now += 59 * S + S // 2


def test_a_gateways_rate_limit_refusal_is_one_span_not_one_per_attempt(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], minute: _Minute
) -> None:
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    gw = serve_on(emulator.url, sqlite_url)
    with MeteredClient(gw.url, department="sales", db_url=sqlite_url) as client:
        _over_the_limit_soon(client, minute)
        with pytest.raises(RateLimited) as refused:
            client.chat(MODEL, HI)
    assert refused.value.retry_after == 1
    assert str(refused.value) == (
        f"the gateway at {gw.url} refused the call (HTTP 429): default/sales is over its "
        "limit of 1 calls a minute; try again in 1 s (see `ometer limit list`)"
    )
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.status, s.error_type) for s in reversed(spans)] == [
        ("gateway", "ok", None),
        ("gateway", "rejected", "rate_limited"),
    ]


def test_an_async_client_sends_a_refused_call_once(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], minute: _Minute
) -> None:
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    gw = serve_on(emulator.url, sqlite_url)
    client_ledger = f"{sqlite_url}-client"  # its own ledger: each ledger one span of the call

    async def calls() -> None:
        async with AsyncMeteredClient(gw.url, department="sales", db_url=client_ledger) as c:
            await c.chat(MODEL, HI)
            minute.now += 59 * S + S // 2
            with pytest.raises(RateLimited):
                await c.chat(MODEL, HI)

    asyncio.run(calls())
    gw.settle()
    assert [s.status for s in gw.ledger.latest(SpanFilter(), 10)] == ["rejected", "ok"]
    mine = Ledger(client_ledger).latest(SpanFilter(), 10)
    assert [(s.status, s.error_type) for s in mine] == [("error", "rate_limited"), ("ok", None)]


def test_ollamas_503_through_a_gateway_is_retried_by_the_gateway_alone(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"retry_backoff": 0.01})
    emulator.inject(Fault.HTTP_503, times=100)
    with MeteredClient(gw.url, db_url=sqlite_url, retry_backoff=0.01) as client:
        with pytest.raises(UpstreamServerError):
            client.chat(MODEL, HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.source, span.error_type) == ("gateway", "upstream_5xx")
    assert len(emulator.requests_to("/api/chat")) == 3  # the gateway's call and its two retries


def test_a_gateway_behind_a_gateway_sends_a_refused_call_once(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    minute: _Minute,
    tmp_path: Path,
) -> None:
    """Chained on two ledgers: each holds one span of the refused call."""
    Ledger(sqlite_url).set_limit(Limit("default", "unassigned", rpm=1))  # the inner's default
    inner = serve_on(emulator.url, sqlite_url)
    outer = serve_on(inner.url, f"sqlite:///{tmp_path / 'outer.db'}")
    body = {"model": MODEL, "messages": HI, "stream": False}
    assert outer.client.post("/api/chat", json=body).status_code == 200
    minute.now += 59 * S + S // 2
    answer = outer.client.post("/api/chat", json=body)
    assert answer.status_code == 429, answer.text
    assert answer.headers["retry-after"] == "1"
    inner.settle()
    outer.settle()
    assert [s.status for s in inner.ledger.latest(SpanFilter(), 10)] == ["rejected", "ok"]
    assert [s.status for s in outer.ledger.latest(SpanFilter(), 10)] == ["error", "ok"]


@pytest.mark.parametrize("stream", [False, True])
def test_two_gateways_chained_on_one_ledger_record_a_call_once(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], stream: bool
) -> None:
    """``ometer run`` in front of ``ometer serve``, both on the company's ledger: the inner
    gateway's span, charged to whom the outer one charges, is the call's one record (each
    call was two spans, the inner one charged to its default department)."""
    inner = serve_on(emulator.url, sqlite_url)
    outer = serve_on(inner.url, sqlite_url)
    body = {"model": MODEL, "messages": HI, "stream": stream}
    who = {"X-Ometer-Department": "sales", "X-Ometer-User": "ann"}
    answer = outer.client.post("/api/chat", json=body, headers=who)
    assert answer.status_code == 200, answer.text
    with MeteredClient(outer.url, department="sales", db_url=sqlite_url) as client:
        reply = client.chat(MODEL, HI, stream=stream)
        last = list(reply)[-1] if stream else reply
    inner.settle()
    outer.settle()
    spans = inner.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.department, s.user, s.status, s.upstream_host) for s in spans] == [
        ("gateway", "sales", None, "ok", emulator.url),
        ("gateway", "sales", "ann", "ok", emulator.url),
    ]
    assert spans[0].id == last.meter.id
    assert spans[1].id == answer.headers["x-ometer-span-id"]
    assert spans[0].output_tokens > 0 and spans[0].cost_total == spans[1].cost_total


class _Unlimited(RateLimits):
    """A gateway's rates that hold no limit of the ledger's: only the inner gateway refuses."""

    def load(self, *_: object, **__: object) -> None:
        pass


def test_a_refusal_behind_a_gateway_on_one_ledger_is_one_span(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    minute: _Minute,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    inner = serve_on(emulator.url, sqlite_url)
    monkeypatch.setattr(_app, "RateLimits", _Unlimited)
    outer = serve_on(inner.url, sqlite_url)
    body = {"model": MODEL, "messages": HI, "stream": False}
    who = {"X-Ometer-Department": "sales"}
    assert outer.client.post("/api/chat", json=body, headers=who).status_code == 200
    minute.now += 59 * S + S // 2
    answer = outer.client.post("/api/chat", json=body, headers=who)
    assert answer.status_code == 429, answer.text
    inner.settle()
    outer.settle()
    spans = inner.ledger.latest(SpanFilter(), 10)
    assert [(s.department, s.status, s.error_type) for s in spans] == [
        ("sales", "rejected", "rate_limited"),
        ("sales", "ok", None),
    ]
    assert answer.headers["x-ometer-span-id"] == spans[0].id


def test_a_call_through_two_gateways_on_one_ledger_is_held_and_spent_once(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """The outer gateway holds the call's bound under the hard budget, the inner one takes that
    hold over (the outer names its span as an ometer client does): nothing is left held, and
    the budget is spent the call's one cost."""
    ledger = Ledger(sqlite_url)
    ledger.add_price_rule(token_prices())
    ledger.save_budget(Budget("default", "sales", "month", 10**9, "USD"))
    inner = serve_on(emulator.url, sqlite_url)
    outer = serve_on(inner.url, sqlite_url)
    body = {"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 8}}
    answer = outer.client.post("/api/chat", json=body, headers={"X-Ometer-Department": "sales"})
    assert answer.status_code == 200, answer.text
    inner.settle()
    outer.settle()
    (span,) = inner.ledger.latest(SpanFilter(), 10)
    assert span.cost_total > 0
    for gw in (outer, inner):
        assert gw.meter.budgets is not None
        gw.meter.budgets.close()  # their leases given back
    (status,) = budget_status(ledger, tz=ZoneInfo("UTC"), now=utc_now())
    assert (status.held, status.spent) == (0, span.cost_total)


def test_ometer_chat_says_when_to_try_again_and_leaves_one_span(  # type: ignore[no-untyped-def]
    cli,
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    minute,
    monkeypatch,
) -> None:
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    gw = serve_on(emulator.url, sqlite_url)
    monkeypatch.setenv("OLLAMA_HOST", gw.url)
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    assert cli("chat", "--dept", "sales", "-m", MODEL, "hi").code == 0
    minute.now += 59 * S + S // 2
    result = cli("chat", "--dept", "sales", "-m", MODEL, "hi")
    assert result.code == 1, result.stderr
    assert "over its limit of 1 calls a minute; try again in 1 s" in result.stderr
    assert "Traceback" not in result.stderr
    gw.settle()
    assert [s.status for s in gw.ledger.latest(SpanFilter(), 10)] == ["rejected", "ok"]


@pytest.mark.parametrize("behind_a_client", [False, True])
def test_a_gateway_killed_in_front_of_one_on_its_ledger_leaves_no_second_record(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    tmp_path: Path,
    behind_a_client: bool,
) -> None:
    """The outer gateway was killed (``kill -9``) with a call open in its journal, which the
    inner gateway recorded, noting the outer one's span (``X-Ometer-Client-Span``): that span
    is the call's record, and the next process on the ledger writes no interrupted copy. A
    gateway's own open calls were always recorded again: it had no gateway behind it.
    ``behind_a_client``: an ometer client called the outer gateway (its call open in its
    journal too, the outer one's noting it), which named the client's span onward; the inner
    span, noting the client's, was found for neither open call (one interrupted copy)."""
    inner = serve_on(emulator.url, sqlite_url)
    writer = Journal(tmp_path / "journals")
    client = make_span(source="sdk", tenant="default", started_at=utc_now())
    tags = {"ometer.client_span": client.id} if behind_a_client else {}
    left = make_span(source="gateway", tenant="default", started_at=utc_now(), tags=tags)
    for opened in (client, left) if behind_a_client else (left,):
        writer.opened(opened, 3)
    said = {"X-Ometer-Client-Span": origin_of(left.id, tags), "X-Ometer-Department": "sales"}
    body = {"model": MODEL, "messages": HI, "stream": False}
    assert inner.client.post("/api/chat", json=body, headers=said).status_code == 200
    inner.settle()
    ledger = Ledger(sqlite_url)
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(writer._path, ledger.journal.directory / "9-dead.journal")  # nobody holds it
    writer.close()
    assert recover_interrupted(ledger, _no_prices) == 0
    (span,) = ledger.latest(SpanFilter(), 10)
    assert span.tags == {"ometer.client_span": said["X-Ometer-Client-Span"]}


def test_a_gateways_ledger_unavailable_refusal_is_sent_once(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway cannot check the hard budget (its ledger away): 503 ``ledger_unavailable``
    with ``Retry-After: 5`` and a span of the refusal. The client waited twice 5 s and sent it
    twice more: three refusals, three spans, for one call."""
    ledger = Ledger(sqlite_url)
    ledger.add_price_rule(token_prices())
    ledger.save_budget(Budget("default", "ops", "month", 10**9, "USD"))
    gw = serve_on(emulator.url, sqlite_url, config={"department": "ops"})
    checked: list[str] = []

    def away(self: BudgetGate, **call: object) -> None:
        checked.append(str(call["call_id"]))
        raise LedgerError("the ledger at test is away")

    monkeypatch.setattr(BudgetGate, "admit", away)
    with MeteredClient(gw.url, db_url=f"{sqlite_url}-client") as client:
        with pytest.raises(UpstreamError) as refused:
            client.chat(MODEL, HI)
    assert f"the gateway at {gw.url} refused the call (HTTP 503)" in str(refused.value)
    assert "cannot be checked" in str(refused.value) and refused.value.retry_after == 5
    assert len(checked) == 1  # one attempt: one refusal, one span


@pytest.mark.parametrize("ledgers", ["one", "two"])
def test_a_client_whose_timeout_runs_out_through_a_gateway_sends_the_call_once(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], ledgers: str
) -> None:
    """The client's own timeout ran out while the gateway's call was still under way: it hung
    up and sent the call again, twice. The gateway recorded each attempt (its caller gone) as
    a call, and a client on its ledger wrote its own timeout beside them: one call, four spans,
    Ollama asked three times. The gateway had the call: it is not sent again, and on one
    ledger the gateway's span is its one record (on two, each ledger holds one)."""
    gw = serve_on(emulator.url, sqlite_url)
    mine = sqlite_url if ledgers == "one" else f"{sqlite_url}-client"
    emulator.latency = 2.0  # past the client's timeout
    try:
        with MeteredClient(gw.url, db_url=mine, upstream_timeout=0.3, retry_backoff=0.01) as c:
            with pytest.raises(UpstreamTimeout):
                c.chat(MODEL, HI)
    finally:
        emulator.latency = 0.0
    assert len(emulator.requests_to("/api/chat")) == 1
    deadline = time.monotonic() + 10
    while not [s for s in gw.ledger.latest(SpanFilter(), 10) if s.source == "gateway"]:
        assert time.monotonic() < deadline, "the gateway never noticed its caller leave"
        time.sleep(0.02)
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.status) for s in spans] == [("gateway", "client_abort")]
    if ledgers == "two":
        (own,) = Ledger(mine).latest(SpanFilter(), 10)
        assert (own.source, own.error_type) == ("sdk", "timeout")
        assert spans[0].tags == {"ometer.client_span": own.id}
