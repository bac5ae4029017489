"""What the gateway makes of an upstream whose HTTP, not its JSON, misleads it.

Found by attack: the caller's ``Accept-Encoding`` reached Ollama's reverse proxy, which
then compressed in an encoding the gateway cannot read (every call a 502 "cannot reach
Ollama", sent three times); a streamed call kept its whole reply in memory, for ever on
an endless stream; a stream that did not end after its final chunk held its caller
(and its slot) until the upstream timeout; ``Expect: 100-continue`` passed on left a call
to a hung server waiting with no timeout; an answer that is no HTTP answer read as an
unreachable server and was sent again; a passed-through pull that broke off ended well.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import select
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from tests._raw_http import RawServer
from tests.gateway.conftest import Gateway

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GENERATE = {"model": "m", "prompt": "hello"}
CHUNK = {"model": "m", "response": "hi", "done": False}
FINAL = {"model": "m", "response": "", "done": True, "prompt_eval_count": 7, "eval_count": 3}
NDJSON = (json.dumps(CHUNK) + "\n" + json.dumps(FINAL) + "\n").encode()


def last_span(gw: Gateway) -> Any:
    return gw.ledger.latest(SpanFilter(), 1)[0]


def _brotli(data: bytes) -> bytes:
    """Brotli when this machine has it (and so the gateway's client may ask for it); else
    bytes labelled so, as a proxy sends them, that nobody here can read."""
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        return b"\x8b\x02\x80not brotli"
    return bytes(brotli.compress(data))


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "br": _brotli,
    "zstd": lambda data: b"(\xb5/\xfdnot zstd",  # this Python has no zstd: nobody reads it
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


class _Compressing(BaseHTTPRequestHandler):
    """A reverse proxy in front of Ollama: compresses in the first coding the request
    accepts, in its own order of preference (as Caddy's ``encode zstd gzip`` does)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append(self.headers.get("accept-encoding"))  # type: ignore[attr-defined]
        accepted = {
            part.split(";")[0].strip().lower()
            for part in (self.headers.get("accept-encoding") or "").split(",")
        }
        body = self.server.body  # type: ignore[attr-defined]
        coding = next((name for name in CODINGS if name in accepted), None)
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        if coding is not None:
            body = CODINGS[coding](body)
            self.send_header("content-encoding", coding)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def compressing(app_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Compressing)
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        yield app_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url), server
    finally:
        server.shutdown()
        server.server_close()


ACCEPT_ENCODINGS = st.lists(
    st.sampled_from(["br", "zstd", "gzip", "deflate", "identity", "*", "compress", "br;q=1.0"]),
    min_size=1,
    max_size=4,
).map(", ".join)


@EXAMPLES
@given(accept=ACCEPT_ENCODINGS, stream=st.booleans())
def test_whatever_codings_the_caller_accepts_ollama_sends_one_the_gateway_reads(
    compressing: tuple[Gateway, Any], accept: str, stream: bool
) -> None:
    """The gateway decodes what Ollama sends and relays it plain: the codings it can read
    are its own to ask for. A Node or browser client's ``br`` forwarded to a compressing
    proxy made every call a 502 "cannot reach Ollama: is it running?", sent three times."""
    gw, server = compressing
    final = {**FINAL, "response": "hi"}
    server.body = NDJSON if stream else json.dumps(final).encode()
    before = len(server.seen)
    reply = gw.client.post(
        "/api/generate", json={**GENERATE, "stream": stream}, headers={"accept-encoding": accept}
    )
    assert reply.status_code == 200, reply.text
    assert "content-encoding" not in reply.headers
    assert reply.content == server.body
    assert len(server.seen) == before + 1
    span = last_span(gw)
    assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 7, 3)


@pytest.fixture
def frozen() -> Iterator[str]:
    """An upstream that takes connections and requests and never says a word (a hung server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = listener.accept()
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("expect", [None, "100-continue"])
def test_a_frozen_ollama_times_out_whatever_the_caller_expects(
    serve_on: Callable[..., Gateway],
    frozen: str,
    sqlite_url: str,
    stream: bool,
    expect: str | None,
) -> None:
    """``Expect: 100-continue`` (curl sends it with a long prompt) was passed on to Ollama:
    the gateway then waited for a "100 Continue" before it read any answer, with no
    timeout at all, so a hung server held the call, its slot and its span for ever."""
    gw = serve_on(frozen, sqlite_url, config={"upstream_timeout": 0.5, "retries": 0})
    headers = {"expect": expect} if expect else {}
    body = {**GENERATE, "stream": stream}
    reply = gw.client.post("/api/generate", json=body, headers=headers)  # 30 s at most
    assert reply.status_code == 504, reply.text
    assert "did not answer in time" in reply.json()["error"]
    span = last_span(gw)
    assert (span.status, span.error_type) == ("error", "timeout")


class _Long(BaseHTTPRequestHandler):
    """Streams ``server.chunks`` pieces of 1 MiB of reply each, then the final chunk."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        piece = json.dumps({**CHUNK, "response": "x" * 2**20}).encode() + b"\n"
        pieces = [piece] * self.server.chunks + [json.dumps(FINAL).encode() + b"\n"]  # type: ignore[attr-defined]
        for data in [*pieces, b""]:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def log_message(self, *args: object) -> None:
        pass


def test_a_long_stream_is_relayed_in_memory_that_does_not_grow_with_it(
    serve_on: Callable[..., Gateway], sqlite_url: str
) -> None:
    """With content capture off, a streamed call kept every piece of its reply's text
    until it ended, though only their number counts: a model that generates for ever
    (Ollama's default ``num_predict`` with context shift) grew the gateway without bound."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Long)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    gw = serve_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url)
    peaks = {}
    try:
        for chunks in (4, 40):
            server.chunks = chunks  # type: ignore[attr-defined]
            tracemalloc.start()
            try:
                with gw.client.stream(
                    "POST", "/api/generate", json={**GENERATE, "stream": True}
                ) as reply:
                    relayed = sum(len(data) for data in reply.iter_bytes())
                peaks[chunks] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert relayed > chunks * 2**20
            span = last_span(gw)
            # FINAL says 3 reply tokens; each piece streamed is one at least
            assert (span.status, span.output_tokens) == ("ok", chunks)
    finally:
        server.shutdown()
        server.server_close()
    # 36 MiB more of reply: the gateway held it all (+36 MiB at its peak), or a few pieces.
    assert peaks[40] - peaks[4] < 8 * 2**20, peaks


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


SSE_TEXT = _sse({"model": "m", "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]})
SSE_USAGE = _sse(
    {"model": "m", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
)
UNENDED = {  # what Ollama sends; what the caller gets (no usage chunk it did not ask for)
    "/api/generate": (NDJSON, NDJSON),
    "/v1/completions": (SSE_TEXT + SSE_USAGE + _sse("[DONE]"), SSE_TEXT + _sse("[DONE]")),
}


class _Unended(BaseHTTPRequestHandler):
    """Sends a whole stream, its final chunk included, and then never ends the body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = UNENDED[self.path][0]
        self.send_response(200)
        kind = "application/x-ndjson" if self.path.startswith("/api/") else "text/event-stream"
        self.send_header("content-type", kind)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        self.wfile.flush()
        self.server.release.wait(60)  # type: ignore[attr-defined]
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("path", sorted(UNENDED))
def test_a_stream_ends_for_its_caller_at_its_final_chunk(
    serve_on: Callable[..., Gateway], sqlite_url: str, path: str
) -> None:
    """The final chunk came, and the upstream kept the body open: the caller had its whole
    answer but its stream did not end (nor its slot come back) until the upstream timeout,
    5 minutes by default, as the official clients read until the stream ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unended)
    server.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve_on(
            f"http://127.0.0.1:{server.server_address[1]}",
            sqlite_url,
            config={"upstream_timeout": 300},
        )
        body = {**GENERATE, "stream": True}
        reply = gw.client.post(path, json=body)  # 30 s at most
        assert reply.status_code == 200
        assert reply.content == UNENDED[path][1]
        span = last_span(gw)
        assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 7, 3)
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


class _Garbled(BaseHTTPRequestHandler):
    """Answers with the raw bytes it is given: an HTTP answer that is not one."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.calls += 1  # type: ignore[attr-defined]
        self.wfile.write(self.server.raw)  # type: ignore[attr-defined]
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


WHOLE = json.dumps({**FINAL, "response": "hi"}).encode()
GARBLED = {
    "status line": b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    "no status line": WHOLE,
    "header too long": b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 70_000 + b"\r\n\r\n",
    "two framings": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
    "coding nobody asked for": b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 2\r\n\r\nhi",
    "a TLS server": b"\x15\x03\x01\x00\x02\x02\x46",  # a TLS alert: the address wants https://
    "status line cut short": b"HTTP/1.1 20",
    "head cut short": b"HTTP/1.1 200 OK\r\ncontent-type: appl",
}


@pytest.fixture
def garbled(app_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbled)
    server.calls = 0  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        yield app_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url), server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("answer", sorted(GARBLED))
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_is_not_http_is_a_502_once_not_a_server_unreachable(
    garbled: tuple[Gateway, Any], answer: str, stream: bool
) -> None:
    """Ollama took the call and answered, in bytes that are no HTTP answer: that was an
    "unreachable" server ("is it running?"), and the call was sent twice more for it, each
    time computed again."""
    gw, server = garbled
    server.raw = GARBLED[answer]
    reply = gw.client.post("/api/generate", json={**GENERATE, "stream": stream})
    assert reply.status_code == 502, reply.text
    message = reply.json()["error"]
    assert "is not an HTTP answer" in message and "is it running" not in message
    assert server.calls == 1
    span = last_span(gw)
    assert (span.status, span.error_type) == ("error", "stream_error")


CUT = {
    "body shorter than its length": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + WHOLE[:20],
        "Not enough data to satisfy content length header (received 20 of 500 bytes)",
    ),
    "chunked body without its last chunk": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n%s\r\n" % WHOLE[:5],
        "Not enough data to satisfy transfer length header",
    ),
    "body not in its coding": (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 7\r\n\r\nnotgzip",
        "its body is not in the coding its Content-Encoding names",
    ),
}


@pytest.mark.parametrize("answer", sorted(CUT))
@pytest.mark.parametrize("stream", [False, True])
def test_a_body_that_breaks_off_is_said_in_words_not_in_aiohttps_reprs(
    garbled: tuple[Gateway, Any], answer: str, stream: bool
) -> None:
    """The client read "broke off: Response payload is not completed: <TransferEncodingError:
    400, message='...'>": a 400 nobody sent, in a repr; for a body not in its coding, only
    "Span callback error in on_body"."""
    gw, server = garbled
    server.raw, said = CUT[answer]
    reply = gw.client.post("/api/generate", json={**GENERATE, "stream": stream})
    message = (
        reply.json()["error"] if not stream else json.loads(reply.text.splitlines()[-1])["error"]
    )
    assert message.rstrip(".").endswith(f"broke off: {said}"), message
    assert "400" not in message.partition("broke off")[2] and "<" not in message
    assert last_span(gw).error_type == "stream_error"


class _PullBreaksOff(BaseHTTPRequestHandler):
    """``/api/pull`` that streams its first status lines, then the connection drops."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for status in ("pulling manifest", "pulling 8eeb52dfb3bb"):
            line = json.dumps({"status": status}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.close_connection = True  # no last chunk: the body broke off

    def log_message(self, *args: object) -> None:
        pass


def test_a_passed_through_stream_that_breaks_off_ends_in_an_error_the_client_raises(
    serve_on: Callable[..., Gateway], sqlite_url: str
) -> None:
    """A pull whose stream broke off reached the client as a stream that ended well, so
    ``ollama pull`` through the gateway said nothing of a model it never got."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PullBreaksOff)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url, allow_admin=True)
        client = ollama.Client(host=gw.url)
        seen: list[str | None] = []

        def pull() -> None:
            seen.extend(progress.status for progress in client.pull("llama3.1:8b", stream=True))

        with pytest.raises(ollama.ResponseError, match="broke off"):
            pull()
        assert seen == ["pulling manifest", "pulling 8eeb52dfb3bb"]
    finally:
        server.shutdown()
        server.server_close()


class _CutShort(RawServer):
    """Answers each request with the first ``sent`` bytes of a JSON body, framed by its
    ``Content-Length`` or in chunks, then hangs up."""

    def __init__(self) -> None:
        self.body, self.sent, self.chunked = b"", 0, False
        super().__init__(self._answer)

    def _answer(self) -> bytes:
        part = self.body[: self.sent]
        framing = (
            b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(part), part)
            if self.chunked and part
            else b"transfer-encoding: chunked\r\n\r\n"
            if self.chunked
            else b"content-length: %d\r\n\r\n%s" % (len(self.body), part)
        )
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + framing


@pytest.fixture
def cut_short(serve_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[Any]:
    """A served gateway before _CutShort (only a real connection shows how an answer ends)."""
    server = _CutShort()
    try:
        yield serve_on(server.url, sqlite_url), server
    finally:
        server.close()


@EXAMPLES
@given(
    path=st.sampled_from(["/api/tags", "/api/ps", "/v1/models", "/api/version", "/api/show"]),
    models=st.integers(1, 40),
    fraction=st.floats(0, 0.999),
    chunked=st.booleans(),
)
def test_a_passed_through_answer_that_breaks_off_never_reaches_the_client_as_whole(
    cut_short: tuple[Gateway, _CutShort], path: str, models: int, fraction: float, chunked: bool
) -> None:
    """``/api/tags`` (or any JSON passed through) whose body broke off reached the client as
    a 200 that ended well, its body cut short: a client cannot tell it from Ollama's whole
    answer, and reads a model list that is not there. The gateway cuts the connection
    before the answer's end instead, so the client raises, as it would against Ollama;
    broken off before its first byte, it is a 502 in the route's error shape."""
    gw, server = cut_short
    server.body = json.dumps({"models": [{"model": f"m{i}:1b"} for i in range(models)]}).encode()
    server.sent, server.chunked = int(len(server.body) * fraction), chunked
    method = "POST" if path == "/api/show" else "GET"
    body = {"model": "m0:1b"} if method == "POST" else None
    if server.sent == 0:
        reply = gw.client.request(method, path, json=body)
        error = reply.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert reply.status_code == 502 and "broke off" in message, reply.text
        return
    with pytest.raises(httpx.RemoteProtocolError):
        gw.client.request(method, path, json=body)


class _Silent(BaseHTTPRequestHandler):
    """Answers 200 and its headers, then nothing; sets ``dropped`` when the gateway hangs up."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.server.headed:  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
        self.server.asked.set()  # type: ignore[attr-defined]
        readable, _, _ = select.select([self.connection], [], [], 60)
        if readable and not self.connection.recv(1):
            self.server.dropped.set()  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("headed", [True, False])
def test_a_caller_that_leaves_before_a_passed_through_answer_starts_stops_ollama(
    serve_on: Callable[..., Gateway], sqlite_url: str, headed: bool
) -> None:
    """A caller that leaves before a passed-through answer's first byte (a ``stream: false``
    pull is minutes of nothing, its headers included, as Ollama sends them at the end) has
    its connection to Ollama dropped, which stops the work: Ollama pulled on for nobody."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.asked, server.dropped = threading.Event(), threading.Event()  # type: ignore[attr-defined]
    server.headed = headed  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url, allow_admin=True)
        host, port = gw.url.removeprefix("http://").split(":")
        body = b'{"model": "llama3.1:8b", "stream": false}'
        with socket.create_connection((host, int(port))) as caller:
            caller.sendall(
                b"POST /api/pull HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert server.asked.wait(30)  # type: ignore[attr-defined]
        assert server.dropped.wait(30)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


class _Headed(RawServer):
    """Answers each request with ``status``, its ``header`` (raw bytes) and Ollama's error."""

    def __init__(self) -> None:
        self.status, self.header = 429, b""
        super().__init__(self._answer)

    def _answer(self) -> bytes:
        answer = b'{"error": "busy"}'
        return (
            b"HTTP/1.1 %d Busy\r\ncontent-type: application/json\r\n%s\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (self.status, self.header, len(answer), answer)
        )


@pytest.fixture
def headed(serve_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[Any]:
    """A served gateway (the in-process client reads headers as UTF-8 only) before _Headed."""
    server = _Headed()
    # Retry-After of a few seconds is not waited for; every example reaches Ollama.
    config = {"retries": 0, "breaker_failures": 1000}
    try:
        yield serve_on(server.url, sqlite_url, config=config), server
    finally:
        server.close()


# What HTTP lets a header value hold: visible ASCII, spaces and tabs inside, and obs-text
# (bytes 0x80-0xFF: UTF-8 text, Latin-1, or nonsense), which no decoding need accept.
HEADER_VALUES = st.binary(min_size=1, max_size=24).map(
    lambda raw: bytes(b for b in raw if b >= 0x21 and b != 0x7F).strip() or b"x"
) | st.sampled_from([b"\xd9\xa1", "3\u2003".encode(), b"-5", b"9" * 400])


def _said(value: bytes) -> list[bytes]:
    """The ``Retry-After`` a caller gets for an upstream's ``value``."""
    text = value.decode("latin-1")
    if re.fullmatch(r"[0-9]+", text):
        return [value]
    if re.fullmatch(r"[0-9]+\.[0-9]*", text):
        return [str(math.ceil(Decimal(text))).encode()]
    try:
        parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return []
    return [value]


@EXAMPLES
@given(
    value=HEADER_VALUES | st.sampled_from([b"0", b"2.5", b"Wed, 21 Oct 2099 07:28:00 GMT"]),
    status=st.sampled_from([429, 503]),
)
def test_ollamas_refusal_reaches_the_caller_with_its_retry_after_whatever_its_bytes(
    headed: tuple[Gateway, _Headed], value: bytes, status: int
) -> None:
    """A 429 or 503 whose ``Retry-After`` was not Latin-1 text once decoded (UTF-8 digits,
    an em space) crashed the gateway's answer: a 500 for Ollama's refusal. It reaches the
    caller with Ollama's status and body, and one span; its ``Retry-After`` as it came when
    it says whole seconds or a date, a fraction of seconds rounded up, else none (``-5`` was
    passed on, each client reading it its own way)."""
    gw, server = headed
    server.status, server.header = status, b"retry-after: " + value
    before = len(gw.ledger.latest(SpanFilter(), 1000))
    reply = gw.client.post("/api/generate", json={**GENERATE, "stream": False})
    assert (reply.status_code, reply.content) == (status, b'{"error": "busy"}')
    assert [v for k, v in reply.headers.raw if k.lower() == b"retry-after"] == _said(value)
    spans = gw.ledger.latest(SpanFilter(), 1000)
    assert len(spans) == before + 1
    assert spans[0].error_type == ("rate_limited" if status == 429 else "upstream_5xx")


@EXAMPLES
@given(value=HEADER_VALUES)
def test_a_passed_through_answer_keeps_its_headers_whatever_their_bytes(
    headed: tuple[Gateway, _Headed], value: bytes
) -> None:
    """A header not Latin-1 text once decoded (a UTF-8 ``x-note: é``) on a passed-through
    answer crashed the gateway's answer: a 500 for Ollama's 200."""
    gw, server = headed
    server.status, server.header = 200, b"x-note: " + value
    reply = gw.client.get("/api/tags")
    assert (reply.status_code, reply.content) == (200, b'{"error": "busy"}')
    assert [v for k, v in reply.headers.raw if k.lower() == b"x-note"] == [value]


@pytest.mark.parametrize("several", [False, True])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/tags"])
def test_a_server_the_gateway_cannot_reach_is_named_by_the_gateways_setting(
    app_on: Callable[..., Gateway], sqlite_url: str, several: bool, path: str
) -> None:
    """Its callers were told 'is it running? Set OLLAMA_HOST to its address': their own
    OLLAMA_HOST points at the gateway as it should, and set to Ollama's address it would
    take their calls past the meter. The address is the gateway's to set."""
    closed = []
    for _ in range(2 if several else 1):
        with socket.create_server(("127.0.0.1", 0)) as listener:  # nothing listens there now
            closed.append(f"http://127.0.0.1:{listener.getsockname()[1]}")
    config = {"upstreams": ",".join(closed), "retries": 0} if several else {"retries": 0}
    gw = app_on(closed[0], sqlite_url, config=config)
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    reply = gw.client.post(path, json={**body, "stream": False}) if "chat" in path else None
    reply = reply or gw.client.get(path)
    said = json.dumps(reply.json(), ensure_ascii=False)
    assert reply.status_code in (502, 503) and "cannot reach Ollama at http://127.0.0.1:" in said
    assert "OLLAMA_HOST to its address" not in said
    assert (
        "is it running? The gateway's --upstream, OMETER_UPSTREAMS or OLLAMA_HOST names it" in said
    )
    # aiohttp's "Cannot connect to host 127.0.0.1:9 ssl:default [Connection refused]" was
    # passed on as it was, to callers and into spans: said plainly, address and reason.
    port = closed[0].rsplit(":", 1)[1]
    assert "ssl:" not in said and f"(127.0.0.1:{port}: Connection refused)" in said, said
    gw.settle()
    for span in gw.ledger.latest(SpanFilter(), 10):
        message = span.error_message or ""
        assert "ssl:" not in message and f"127.0.0.1:{port}: Connection refused" in message
