"""Whole (non-streamed) answers larger than the gateway reads at once: an embedding batch.

Ollama has no limit on an answer's size, and a batch of 2,000 inputs of 4,096 dimensions
is about 150 MB of JSON. Past :data:`MAX_ANSWER_BYTES` the gateway relays such an answer as
it arrives and still meters it exactly from the small fields written after the vectors.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

INPUTS = [f"document number {i} about the quarterly numbers" for i in range(6)]


def spans(gw: Gateway) -> list[Any]:
    gw.settle()
    return sorted(gw.ledger.latest(SpanFilter(), 100), key=lambda s: s.started_at)


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings"])
def test_an_embedding_batch_past_the_read_limit_is_relayed_and_metered_exactly(
    app: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A batch whose answer is longer than the gateway reads whole was a 502 (Ollama answers
    it; the gateway refused it): it is relayed as it came, its span with Ollama's counts."""
    from ollama_meter.upstream import _pooled

    body = {"model": "nomic-embed-text", "input": INPUTS}
    gw = app(emulator.url)
    small = gw.client.post(path, json=body)  # under the limit: read whole, as ever
    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 2_000)
    large = gw.client.post(path, json=body)
    assert (small.status_code, large.status_code) == (200, 200)
    assert len(large.content) > 2_000
    whole, relayed = small.json(), large.json()
    if path == "/api/embed":
        assert relayed["embeddings"] == whole["embeddings"]
        counted = relayed["prompt_eval_count"]
        assert (relayed["model"], counted) == (whole["model"], whole["prompt_eval_count"])
    else:
        assert relayed["data"] == whole["data"]
        counted = relayed["usage"]["prompt_tokens"]
        assert relayed["usage"] == whole["usage"]
    first, second = spans(gw)
    for span in (first, second):
        assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
            "ok",
            counted,
            0,
            "reported",
        )
    if path == "/api/embed":
        assert second.load_duration_ns == relayed["load_duration"]
        assert second.total_duration_ns == relayed["total_duration"]


_VECTOR = json.dumps([round(0.0123456789 * ((i % 17) - 8), 9) for i in range(4096)]).encode()
_BATCH = 1_700
_COUNTED = 23_456
BIG = (
    b'{"model":"nomic-embed-text","embeddings":['
    + b",".join([_VECTOR] * _BATCH)
    + b'],"total_duration":912345678,"load_duration":1234567,"prompt_eval_count":%d}' % _COUNTED
)


class _Batch(BaseHTTPRequestHandler):
    """Ollama answering an embedding batch of 1,700 inputs of 4,096 dimensions (70 MB)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(BIG)))
        self.end_headers()
        self.wfile.write(BIG)

    def log_message(self, *args: object) -> None:
        pass


def test_an_embedding_answer_over_64_mib_goes_through_byte_for_byte(
    app_on: Any, sqlite_url: str
) -> None:
    """The real size, end to end: every byte as Ollama sent it, the count exact in the span
    (on SQLite only: the database is not what it is about, and it moves 70 MB)."""
    from ollama_meter.upstream._pooled import MAX_ANSWER_BYTES

    assert len(BIG) > MAX_ANSWER_BYTES
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Batch)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app_on(f"http://127.0.0.1:{server.server_address[1]}", sqlite_url)
        reply = gw.client.post("/api/embed", json={"model": "m", "input": ["a"] * _BATCH})
    finally:
        server.shutdown()
        server.server_close()
    assert reply.status_code == 200
    assert reply.content == BIG
    [span] = spans(gw)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        _COUNTED,
        0,
        "reported",
    )
    assert (span.total_duration_ns, span.load_duration_ns) == (912_345_678, 1_234_567)


class _Says(BaseHTTPRequestHandler):
    """An upstream answering every embedding with ``server.answer``, whatever it is."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        answer: bytes = self.server.answer  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if not getattr(self.server, "chunked", False):
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for start in range(0, len(answer), 300):
            piece = answer[start : start + 300]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def _vectors(count: int) -> bytes:
    return b'{"model":"m","embeddings":[' + b",".join([b"[0.5,-0.25,0.125]"] * count) + b"]"


PROMPT = "seven words of a prompt to embed here"


@pytest.mark.parametrize(
    "answer",
    [
        _vectors(200) + b',"error":"the runner crashed"}',  # an error, after the vectors
        _vectors(200) + b',"prompt_eval_count":9',  # broken off: never ends
        _vectors(200) + b',"prompt_eval_count":9}}',  # not JSON at its very end
        b"[" + _vectors(200) + b"}]",  # JSON, but not an object
        b"[" + _vectors(200) + b"}]\n \n",  # the same, white space after it
        _vectors(200) + b',"error":"the runner crashed"}\n',
    ],
)
def test_a_relayed_answer_that_is_not_one_is_cut_before_its_end_and_an_error_span(
    app: Any, monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    """Once its first bytes went, a relayed answer cannot become a 502: its last bytes are
    held back and the connection cut, so no client takes it for an answer; its span is an
    error, charged its prompt (a 200: Ollama did the work)."""
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 1_000)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Says)
    server.answer = answer  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app(f"http://127.0.0.1:{server.server_address[1]}")
        with gw.client.stream("POST", "/api/embed", json={"model": "m", "input": PROMPT}) as reply:
            assert reply.status_code == 200
            got = b"".join(reply.iter_raw())
    finally:
        server.shutdown()
        server.server_close()
    assert answer.startswith(got) and len(got) < len(answer.rstrip())  # its last byte never
    [span] = spans(gw)
    assert (span.status, span.error_type) == ("error", "stream_error")


def test_a_relayed_answer_without_counts_is_estimated(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_meter.meter import estimate_tokens
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 1_000)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Says)
    server.answer = _vectors(200) + b"}"  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app(f"http://127.0.0.1:{server.server_address[1]}")
        reply = gw.client.post("/api/embed", json={"model": "m", "input": PROMPT})
    finally:
        server.shutdown()
        server.server_close()
    assert (reply.status_code, reply.content) == (200, _vectors(200) + b"}")
    [span] = spans(gw)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        estimate_tokens(PROMPT),
        0,
        "estimated",
    )


def test_a_client_of_the_real_server_cannot_take_a_cut_answer_for_a_whole_one(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real connection the cut shows: the chunked body has no end, and the client raises."""
    import httpx

    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 1_000)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Says)
    upstream.answer = _vectors(200) + b',"error":"the runner crashed"}'  # type: ignore[attr-defined]
    threading.Thread(
        target=upstream.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve(f"http://127.0.0.1:{upstream.server_address[1]}")
        with pytest.raises(httpx.RemoteProtocolError):
            gw.client.post("/api/embed", json={"model": "m", "input": PROMPT})
    finally:
        upstream.shutdown()
        upstream.server_close()
    [span] = spans(gw)
    assert (span.status, span.error_type) == ("error", "stream_error")


class _Stalls(BaseHTTPRequestHandler):
    """Ollama sending an answer's first 2,000 bytes, then nothing: until the gateway drops the
    connection (it sets ``server.dropped``), which is how Ollama is told to stop."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        answer = _vectors(200) + b',"prompt_eval_count":9}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer[:2_000])
        self.wfile.flush()
        self.connection.settimeout(30)
        if self.rfile.read(1) == b"":
            self.server.dropped.set()  # type: ignore[attr-defined]
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_client_that_hangs_up_mid_relay_stops_ollama_and_is_a_client_abort_span(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client has the answer's first bytes at once (only the last is held back), and its
    hang-up while Ollama is silent stops Ollama and ends the call, as a stream's does."""
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 1_000)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    upstream.dropped = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(
        target=upstream.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = serve(f"http://127.0.0.1:{upstream.server_address[1]}")
        with gw.client.stream("POST", "/api/embed", json={"model": "m", "input": PROMPT}) as reply:
            assert reply.status_code == 200
            first = next(reply.iter_raw())
        assert first == (_vectors(200) + b',"prompt_eval_count":9}')[: len(first)]
        assert upstream.dropped.wait(30)  # type: ignore[attr-defined]
    finally:
        upstream.shutdown()
        upstream.server_close()
    [span] = spans(gw)
    assert span.status == "client_abort"


def test_an_answer_of_no_declared_length_is_relayed_from_its_first_bytes_read(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent chunked, the answer's first bytes are read before it is known to be large: they
    are parsed and sent in pieces (here of 7 bytes), then the rest as it comes, all exact."""
    from ollama_meter.gateway import _whole
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 1_000)
    monkeypatch.setattr(_whole, "PIECE", 7)
    answer = _vectors(200) + b',"prompt_eval_count":9,"load_duration":5}'
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Says)
    server.answer, server.chunked = answer, True  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app(f"http://127.0.0.1:{server.server_address[1]}")
        reply = gw.client.post("/api/embed", json={"model": "m", "input": PROMPT})
    finally:
        server.shutdown()
        server.server_close()
    assert (reply.status_code, reply.content) == (200, answer)
    [span] = spans(gw)
    assert (span.status, span.input_tokens, span.token_source, span.load_duration_ns) == (
        "ok",
        9,
        "reported",
        5,
    )
