"""A key revoked while its call waits for a slot: the call is refused when its turn comes.

The key is read at the door, and a call may then wait in the fair queue for as long as
the calls ahead of it run (minutes). Revoked meanwhile, it went on to Ollama when its turn
came. It is now read again as the queue grants the slot, before anything is sent: a key
revoked by then gets the door's 401, and the call's span (opened, its budget reserved, as
it queued) is written as refused. A call already sent runs to its end (README, Security).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

LLAMA = "llama3.1:8b"


def body(text: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": text}], "stream": stream}


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def waiting(gw: Gateway) -> int:
    """Calls waiting in the gateway's fair queue."""
    state: dict[str, Any] = gw.client.app_state  # type: ignore[attr-defined]
    return int(state["gateway"].fleet.queue.waiting)


def posted(gw: Gateway, path: str, sent: dict[str, Any], key: str) -> Callable[[], None]:
    """A call to make in a thread; its answer in ``answers``."""

    def call() -> None:
        answers.append(gw.client.post(path, json=sent, headers={"X-Ometer-Key": key}))

    answers: list[httpx.Response] = []
    call.answers = answers  # type: ignore[attr-defined]
    return call


def prompts(emu: OllamaEmulator) -> list[str]:
    return [r.body["messages"][0]["content"] for r in emu.requests_to("/api/chat")]


def spans(gw: Gateway) -> list[Any]:
    gw.settle()
    return sorted(gw.ledger.latest(SpanFilter(), 100), key=lambda s: s.started_at)


@pytest.mark.parametrize("require_key", [True, False])
def test_a_call_whose_key_is_revoked_while_it_waits_is_refused_when_its_turn_comes(
    app: Any, emulator: OllamaEmulator, require_key: bool
) -> None:
    emulator.token_latency = 1.0  # the first call holds the only slot until hurried
    gw = app(emulator.url, config={"slots": 1}, require_key=require_key)
    _, first_key = gw.ledger.create_key(name="a", tenant="acme", department="sales")
    queued, second_key = gw.ledger.create_key(name="b", tenant="acme", department="hr")
    first = posted(gw, "/api/chat", body("first"), first_key)
    second = posted(gw, "/v1/chat/completions", body("second"), second_key)
    threads = [threading.Thread(target=first)]
    threads[0].start()
    wait_for(lambda: emulator.in_flight == 1, "the first call to run")
    threads.append(threading.Thread(target=second))
    threads[1].start()
    wait_for(lambda: waiting(gw) == 1, "the second call to wait for the slot")
    gw.ledger.revoke_key(queued.id)
    emulator.hurry()
    for thread in threads:
        thread.join(timeout=60)
    (answered,), (refused,) = first.answers, second.answers  # type: ignore[attr-defined]
    assert answered.status_code == 200
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    tail = "" if require_key else ", or none to be charged to the defaults"
    assert refused.json()["error"]["message"] == (
        "this API key is not a live key (revoked, expired, or mistyped): send a live one "
        f"(`ometer keys list`){tail}"
    )
    assert prompts(emulator) == ["first"]  # the refused call never reached Ollama
    ok, gone = spans(gw)
    assert (ok.status, ok.department) == ("ok", "sales")
    assert refused.headers["x-ometer-span-id"] == gone.id
    assert (
        gone.status,
        gone.error_type,
        gone.http_status,
        gone.tenant,
        gone.department,
        gone.upstream_host,
        gone.input_tokens,
        gone.output_tokens,
        gone.cost_total,
    ) == ("error", "key_revoked", 401, "acme", "hr", "", 0, 0, 0)
    assert gone.error_message == refused.json()["error"]["message"]
    assert gone.queue_ns is not None and gone.queue_ns > 0  # it waited its turn
    assert waiting(gw) == 0
    # The slot it was granted went back: the next call runs.
    after = gw.client.post("/api/chat", json=body("after"), headers={"X-Ometer-Key": first_key})
    assert after.status_code == 200
    assert prompts(emulator) == ["first", "after"]


def test_a_key_that_cannot_be_read_again_as_its_call_leaves_the_queue_is_a_503(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """As at the door: a key that cannot be checked sends no call (its row broken in SQL
    while the call waited; the ledger away alike), and the caller is told to retry."""
    emulator.token_latency = 1.0
    gw = app_on(emulator.url, sqlite_url, config={"slots": 1}, require_key=True)
    _, first_key = gw.ledger.create_key(name="a", tenant="acme", department="sales")
    _, second_key = gw.ledger.create_key(name="b", tenant="acme", department="hr")
    first = posted(gw, "/api/chat", body("first"), first_key)
    second = posted(gw, "/api/chat", body("second"), second_key)
    threads = [threading.Thread(target=first)]
    threads[0].start()
    wait_for(lambda: emulator.in_flight == 1, "the first call to run")
    threads.append(threading.Thread(target=second))
    threads[1].start()
    wait_for(lambda: waiting(gw) == 1, "the second call to wait for the slot")
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET created_at = 'garbage' WHERE id = 2")
    engine.dispose()
    emulator.hurry()
    for thread in threads:
        thread.join(timeout=60)
    (answered,), (refused,) = first.answers, second.answers  # type: ignore[attr-defined]
    message = (
        "the API key cannot be checked, so the call was not made: key 2 in the ledger cannot "
        "be read: its created_at 'garbage' is not a value of the column's type; fix or delete "
        "the row in SQL (`ometer keys create` makes a new key)"
    )
    assert (answered.status_code, refused.status_code) == (200, 503)
    assert (refused.json(), refused.headers["retry-after"]) == ({"error": message}, "5")
    assert prompts(emulator) == ["first"]
    _, gone = spans(gw)
    assert (gone.status, gone.error_type, gone.http_status, gone.upstream_host) == (
        "error",
        "ledger_unavailable",
        503,
        "",
    )
    assert refused.headers["x-ometer-span-id"] == gone.id


def test_a_stream_under_way_when_its_key_is_revoked_runs_to_its_end(
    app: Any, emulator: OllamaEmulator
) -> None:
    """What was sent runs out (bounded by its reply cap and the upstream timeout); the next
    call with the key is refused at the door."""
    emulator.token_latency = 1.0
    gw = app(emulator.url, require_key=True)
    key, secret = gw.ledger.create_key(name="a", tenant="acme", department="sales")
    streamed = posted(gw, "/api/chat", body("long", stream=True), secret)
    thread = threading.Thread(target=streamed)
    thread.start()
    wait_for(lambda: emulator.in_flight == 1, "the stream to run")
    gw.ledger.revoke_key(key.id)
    emulator.hurry()
    thread.join(timeout=60)
    (answer,) = streamed.answers  # type: ignore[attr-defined]
    assert answer.status_code == 200
    assert '"done":true' in answer.text.replace(" ", "")
    (span,) = spans(gw)
    assert (span.status, span.department) == ("ok", "sales")
    again = gw.client.post("/api/chat", json=body("again"), headers={"X-Ometer-Key": secret})
    assert again.status_code == 401


def test_a_call_whose_key_is_revoked_while_it_waits_again_after_a_move_is_refused(
    app_on: Callable[..., Gateway],
    emulators: Callable[..., OllamaEmulator],
    sqlite_url: str,
) -> None:
    """A call its first server fails moves to another, and may wait there for a slot as long
    as it waited the first time: its key is read again when that wait ends too."""
    one, two = emulators(LLAMA, token_latency=1.0), emulators(LLAMA, token_latency=1.0)
    servers = f"{one.url}#slots=1,{two.url}#slots=1"
    gw = app_on(one.url, sqlite_url, config={"upstreams": servers}, require_key=True)
    _, first_key = gw.ledger.create_key(name="a", tenant="acme", department="sales")
    moved, second_key = gw.ledger.create_key(name="b", tenant="acme", department="hr")
    first = posted(gw, "/api/chat", body("first"), first_key)
    second = posted(gw, "/api/chat", body("second"), second_key)
    threads = [threading.Thread(target=first)]
    threads[0].start()
    wait_for(lambda: one.in_flight + two.in_flight == 1, "the first call to run")
    busy, free = (one, two) if one.in_flight else (two, one)
    free.inject(Fault.HTTP_503)  # the second call is sent there, fails, and moves to the busy one
    threads.append(threading.Thread(target=second))
    threads[1].start()
    wait_for(lambda: waiting(gw) == 1, "the second call to wait for the busy server's slot")
    assert free.pending_faults == 0  # it was sent to the free server first
    gw.ledger.revoke_key(moved.id)
    busy.hurry()
    for thread in threads:
        thread.join(timeout=60)
    (answered,), (refused,) = first.answers, second.answers  # type: ignore[attr-defined]
    assert (answered.status_code, refused.status_code) == (200, 401)
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"] == (
        "this API key is not a live key (revoked, expired, or mistyped): send a live one "
        "(`ometer keys list`)"
    )
    assert prompts(busy) == ["first"]  # the refused call never reached it
    assert prompts(free) == ["second"]  # where it failed
    ok, gone = spans(gw)
    assert (ok.status, ok.department, ok.upstream_host) == ("ok", "sales", busy.url)
    assert refused.headers["x-ometer-span-id"] == gone.id
    assert (
        gone.status,
        gone.error_type,
        gone.http_status,
        gone.department,
        gone.upstream_host,
        gone.input_tokens,
        gone.output_tokens,
        gone.cost_total,
    ) == ("error", "key_revoked", 401, "hr", free.url, 0, 0, 0)
    assert waiting(gw) == 0
    # Both slots went back: two calls run side by side.
    busy.token_latency = free.token_latency = 0.0
    again = [posted(gw, "/api/chat", body(f"after {n}"), first_key) for n in range(2)]
    for call in again:
        call()
    assert [a.status_code for (a,) in (c.answers for c in again)] == [200, 200]  # type: ignore[attr-defined]
