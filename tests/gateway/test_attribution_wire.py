"""Attribution on the wire: header framings that two readers could read two ways, and a key
revoked while its callers keep calling, against a real server (uvicorn on httptools).

A proxy in front of the gateway and the gateway itself must never read different callers
out of one request: a folded header line, a bare LF, a NUL, a blank before the colon or a
body framed twice would let one of them see a department, user or key the other does not.
The server refuses each before the app (400, no span); a parser made lenient by an upgrade
would fail here.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

BODY = json.dumps(
    {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
).encode()


def raw(url: str, head: bytes, body: bytes = BODY) -> bytes:
    """Send one request as these bytes; the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n" + head
        + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


FRAMINGS = {
    "a department folded onto a second line": b"X-Ometer-Department: sales\r\n marketing\r\n",
    "a user folded onto a second line": b"X-Ometer-User: bob\r\n\tmallory\r\n",
    "a key folded onto a second line": b"X-Ometer-Key: ollama\r\n {key}\r\n",
    "a header ended by a bare LF": b"X-Ometer-User: bob\nX-Ometer-User: mallory\r\n",
    "a NUL in a department": b"X-Ometer-Department: sal\x00es\r\n",
    "a blank before the colon": b"X-Ometer-Department : ops\r\n",
    "a body framed twice": b"Transfer-Encoding: chunked\r\n",
}


@pytest.fixture
def keyed_server(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> tuple[Gateway, str]:
    gw = serve_on(emulator.url, sqlite_url, require_key=True)
    _, secret = gw.ledger.create_key(name="bot", tenant="acme", department="hr", users=("bob",))
    return gw, secret


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_header_two_readers_could_read_two_ways_is_refused_before_the_app(
    keyed_server: tuple[Gateway, str], framing: str
) -> None:
    gw, secret = keyed_server
    head = b"X-Ometer-Key: " + secret.encode() + b"\r\n"
    answer = raw(gw.url, head + FRAMINGS[framing].replace(b"{key}", secret.encode()))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert gw.ledger.count() == 0


def test_a_user_in_bytes_beyond_ascii_is_refused_and_charged_to_the_key(
    keyed_server: tuple[Gateway, str],
) -> None:
    """obs-text is legal in a header value: it reaches the app, where it is no user the key
    allows (a 403 charged to the key's department, to no user)."""
    gw, secret = keyed_server
    answer = raw(gw.url, b"X-Ometer-Key: " + secret.encode() + b"\r\nX-Ometer-User: b\xf6b\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:300]
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.tenant, span.department, span.user, span.http_status) == ("acme", "hr", None, 403)


def test_no_call_that_starts_after_its_key_is_revoked_is_made(
    keyed_server: tuple[Gateway, str],
) -> None:
    """Callers keep calling with a key while it is revoked: each call that began after the
    revocation returned is refused (no cache anywhere), whatever was under way then."""
    gw, secret = keyed_server
    (key,) = gw.ledger.keys()
    made: list[tuple[float, int]] = []
    stop = threading.Event()

    def call_on() -> None:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            while not stop.is_set():
                began = time.monotonic()
                reply = client.post("/api/chat", content=BODY, headers={"X-Ometer-Key": secret})
                made.append((began, reply.status_code))

    callers = [threading.Thread(target=call_on) for _ in range(4)]
    for caller in callers:
        caller.start()
    # A call answered with the key first (a loaded machine answered none in a fixed 0.5 s).
    deadline = time.monotonic() + 30
    while 200 not in {status for _, status in made}:
        assert time.monotonic() < deadline, made
        time.sleep(0.05)
    gw.ledger.revoke_key(key.id)
    revoked = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for caller in callers:
        caller.join()
    before = [status for began, status in made if began < revoked]
    after = [status for began, status in made if began > revoked]
    assert before and after, (len(before), len(after))
    assert set(after) == {401}, after
    ok = gw.ledger.latest(SpanFilter(), 10_000)
    assert {(s.tenant, s.department) for s in ok} == {("acme", "hr")}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [("été".encode(), "été"), ("ops\u202e".encode(), "ops\\u202e"), (b"b\xf6b", "böb")],
)
def test_a_name_beyond_ascii_is_refused_as_the_caller_wrote_it(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str,
    sent: bytes, shown: str,
) -> None:  # fmt: skip
    """Names are ASCII: a department a client sent as UTF-8 is refused, and the error names it
    as sent (`'été'`), not as its bytes read one a character (`'Ã©tÃ©'`); bytes that are no
    UTF-8 are read one a character (Latin-1, as HTTP reads them)."""
    gw = serve_on(emulator.url, sqlite_url)
    answer = raw(gw.url, b"X-Ometer-Department: " + sent + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error.startswith(f"department name '{shown}' has characters other than"), error
