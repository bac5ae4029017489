"""A caller that hangs up at the worst moment: its span is written once, Ollama is stopped.

Driven through the ASGI app in process, with a client whose hang-up the test places
exactly (an ASGI server may report it at any moment).
"""

from __future__ import annotations

import json
import threading
from typing import Any
from zoneinfo import ZoneInfo

import anyio

from ollama_meter.ledger import SpanFilter
from ollama_meter.records import LeaseKey
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _scope(client: Any, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn says
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": client.app_state.copy(),
    }


def _gone_as_the_answer_starts(gateway: Gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``body``; the client is there while the call waits on Ollama, and has gone by the
    time the answer starts (its hang-up came with Ollama's headers). What the app sent."""
    client: Any = gateway.client
    receives = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal receives
        receives += 1
        if receives == 1:
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        if receives == 2:  # listening for the hang-up while the call waits on Ollama
            await anyio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await client.app(_scope(client, "/api/chat"), receive, send)

    client.portal.call(call)
    return sent


def _until(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"still not {what} after 10 s")


def test_a_hang_up_with_the_answers_first_bytes_still_writes_the_span_and_stops_ollama(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.05  # Ollama is still answering when the caller has gone
    try:
        _gone_as_the_answer_starts(sqlite_app, CHAT)
        _until(lambda: sqlite_app.ledger.latest(SpanFilter(), 10), "recorded")
        _until(lambda: emulator.hangups == 1, "stopped")  # the connection to Ollama dropped
    finally:
        emulator.token_latency = 0.0
    (span,) = sqlite_app.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")
    assert emulator.wait_idle() == 0
    client: Any = sqlite_app.client
    assert client.app_state["gateway"].rates.running() == {}  # its department's count went with it


def test_a_span_being_written_when_the_caller_hangs_up_is_still_written() -> None:
    """The hang-up cancels the call's task (``until_gone``) while its span waits for a ledger
    thread (all busy in a group commit): the write still happens, before the task ends."""
    import asyncio

    from ollama_meter.gateway._threads import in_thread

    busy = threading.Event()
    written: list[str] = []

    async def main() -> list[str]:
        blockers = _blocking_the_ledger_threads(busy)
        writing = asyncio.ensure_future(in_thread(written.append, "span"))
        await asyncio.sleep(0)  # the write is queued behind the busy threads
        writing.cancel()  # the caller hung up
        for _ in range(100):  # the cancellation reaches the task (and, unshielded, the queue)
            await asyncio.sleep(0)
        busy.set()
        seen = []
        try:
            await writing
        except asyncio.CancelledError:
            seen.append(f"cancelled after {written}")
        await asyncio.gather(*blockers)
        return seen

    try:
        assert asyncio.run(main()) == ["cancelled after ['span']"]
    finally:
        busy.set()


def _blocking_the_ledger_threads(busy: threading.Event) -> list[Any]:
    """Every ledger thread of the gateway busy (a group commit) until ``busy`` is set."""
    import asyncio

    from ollama_meter.gateway._threads import in_thread

    return [asyncio.ensure_future(in_thread(busy.wait)) for _ in range(64)]


def test_a_call_opened_as_its_request_is_cancelled_is_still_closed(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The request is cancelled (a server stopping) while its call is opened on a ledger
    thread: the opened call is closed, its span written and its budget hold settled."""
    import asyncio

    from ollama_meter.budgets import Budget
    from ollama_meter.config import load_settings
    from ollama_meter.gateway._fleet import Fleet
    from ollama_meter.gateway._relay import Relay
    from ollama_meter.gateway._requests import parse_request
    from ollama_meter.meter import Attribution, Meter
    from ollama_meter.periods import current_period
    from tests.factories import token_prices

    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    budget = meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    relay = Relay(meter, Fleet.from_settings(settings))
    request = parse_request("/api/chat", json.dumps(CHAT).encode())
    busy = threading.Event()

    async def main() -> str:
        blockers = _blocking_the_ledger_threads(busy)
        opening = asyncio.ensure_future(relay._open(request, Attribution("acme", "sales")))
        for _ in range(100):  # it waits for a ledger thread now
            await asyncio.sleep(0)
        opening.cancel()
        busy.set()
        try:
            await opening
        except asyncio.CancelledError:
            return "cancelled"
        finally:
            await asyncio.gather(*blockers)
        return "opened"

    try:
        assert asyncio.run(main()) == "cancelled"
    finally:
        busy.set()
    (span,) = meter.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.tenant) == ("client_abort", "acme")
    assert meter.budgets is not None
    meter.budgets.close()  # nothing holds the lease: it is given back
    month = current_period("month", tz=ZoneInfo("UTC"), now=span.started_at).start
    with meter.ledger.budget_snapshot() as store:
        assert store.held(LeaseKey(budget.id or 0, "acme", month), span.started_at) == 0
