"""A key revoked while its call's body is still arriving: the call is never sent.

README (Security): "A revoked key stops working for every call not yet sent to Ollama". A
key is read at the door, as the headers arrive, and a body may take minutes after that (60 s,
and 1 s more a 64 KiB part). The gateway sent such a call on the key read at the door, and
charged it to the revoked key. Against a real server (uvicorn on httptools), both ledgers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

BODY = json.dumps(
    {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
).encode()


def _sent(gw: Gateway, path: str, header: str, secret: str, body: bytes, *, parts: int = 1,
          between: Callable[[], object] = lambda: None) -> bytes:  # fmt: skip
    """The answer to a request sent as its head and ``parts`` parts of ``body``, ``between``
    called after the first part (the door has the head: the key is read meanwhile)."""
    host, port = gw.url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{header}: {secret}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    size = -(-len(body) // parts)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        for start in range(0, len(body), size):
            sock.sendall(body[start : start + size])
            if start == 0:
                between()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _revoke_after_a_while(gw: Gateway, key_id: int) -> Callable[[], None]:
    def revoke() -> None:
        # Time for the door to read the key; what is asserted holds however long it took.
        time.sleep(0.5)
        gw.ledger.revoke_key(key_id)

    return revoke


@pytest.mark.parametrize("required", [True, False], ids=["require-key", "keys-optional"])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_key_revoked_while_its_body_arrives_sends_nothing_and_charges_nothing(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    db_url: str,
    required: bool,
    path: str,
) -> None:
    gw = serve_on(emulator.url, db_url, require_key=required)
    key, secret = gw.ledger.create_key(name="bot", tenant="acme", department="sales")
    revoke = _revoke_after_a_while(gw, key.id)
    answer = _sent(gw, path, "X-Ometer-Key", secret, BODY, parts=2, between=revoke)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:400]
    assert b"not a live key" in answer
    assert secret.encode() not in answer
    assert emulator.requests == []
    assert gw.ledger.latest(SpanFilter(), 10) == []


def test_a_live_key_whose_body_arrives_in_parts_is_served_and_charged_to_it(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(emulator.url, sqlite_url, require_key=True)
    _, secret = gw.ledger.create_key(name="bot", tenant="acme", department="sales")
    answer = _sent(gw, "/api/chat", "X-Api-Key", secret, BODY, parts=8)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:400]
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.tenant, span.department, span.http_status) == ("acme", "sales", 200)


@pytest.mark.parametrize("path", ["/api/show", "/api/pull"])
def test_a_key_revoked_while_a_pass_through_or_admin_body_arrives_is_refused(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, path: str
) -> None:
    """With ``--require-key`` every route needs a live key: ``/api/show`` too, and model
    management with ``--allow-admin`` and no admin token."""
    gw = serve_on(emulator.url, sqlite_url, require_key=True, allow_admin=True)
    key, secret = gw.ledger.create_key(name="bot", tenant="acme", department="sales")
    body = json.dumps({"model": "llama3.1:8b"}).encode()
    revoke = _revoke_after_a_while(gw, key.id)
    answer = _sent(gw, path, "X-Ometer-Key", secret, body, parts=2, between=revoke)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:400]
    assert emulator.requests == []


def test_a_key_revoked_by_the_cli_stops_at_the_door_of_every_gateway_on_the_ledger(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    db_url: str,
    cli: Callable[..., Any],
) -> None:
    """Two gateways on one ledger, a stream under way on one when ``ometer keys revoke`` runs:
    the stream runs to its end, charged to the key; the next call to either gateway is refused
    at the door (no gateway keeps keys: nothing to wait for)."""
    emulator.token_latency = 1.0
    one, other = (serve_on(emulator.url, db_url, require_key=True) for _ in range(2))
    key, secret = one.ledger.create_key(name="bot", tenant="acme", department="sales")
    streamed: list[httpx.Response] = []
    stream_body = {**json.loads(BODY), "stream": True}

    def stream() -> None:
        sent = {"Authorization": f"Bearer {secret}"}
        streamed.append(one.client.post("/api/chat", json=stream_body, headers=sent))

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 60
    while emulator.in_flight != 1:
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.01)
    done = cli("keys", "revoke", str(key.id), "--db", db_url)
    assert done.code == 0, done.stderr
    refused = [
        gw.client.post("/api/chat", content=BODY, headers={"X-Api-Key": secret})
        for gw in (other, one)
    ]
    emulator.hurry()
    thread.join(timeout=60)
    assert [r.status_code for r in refused] == [401, 401], [r.text for r in refused]
    assert all("not a live key" in r.json()["error"] for r in refused)
    (answer,) = streamed
    assert answer.status_code == 200 and '"done":true' in answer.text.replace(" ", "")
    one.settle()
    (span,) = one.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.tenant, span.department) == ("ok", "acme", "sales")
    assert len(emulator.calls) == 1
