"""``ollama create`` with a local file through the gateway: ``HEAD``/``POST /api/blobs/{digest}``.

Model management (the model files behind ``/api/create``), so under its policy; the body,
a model file of gigabytes, is streamed to Ollama as it arrives, never held whole.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ollama
import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

MIB = 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_blobs_are_model_management_refused_unless_allowed(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    data = b"GGUF" + b"\0" * 100
    for method in ("HEAD", "POST"):
        reply = gw.client.request(method, f"/api/blobs/{digest_of(data)}", content=data)
        assert reply.status_code == 403
    assert gw.client.post(f"/api/blobs/{digest_of(data)}", content=data).json() == {
        "error": f"/api/blobs/{digest_of(data)} manages models and is refused by the gateway; "
        "start `ometer serve --allow-admin` to allow it"
    }
    assert not emulator.requests and not emulator.blobs


def test_a_blob_larger_than_the_body_limit_is_uploaded_whole(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """A model file is not a JSON body: ``--max-body-bytes`` does not bind it (before, the
    route was not served at all, and ``ollama create`` from a GGUF file failed with 404)."""
    gw = app_on(emulator.url, sqlite_url, allow_admin=True, max_body_bytes=MIB)
    data = bytes(range(256)) * (8 * MIB // 256) + b"tail"
    digest = digest_of(data)
    assert gw.client.head(f"/api/blobs/{digest}").status_code == 404
    uploaded = gw.client.post(f"/api/blobs/{digest}", content=data)
    assert (uploaded.status_code, uploaded.content) == (201, b"")
    assert emulator.blobs == {digest: len(data)}
    assert gw.client.head(f"/api/blobs/{digest}").status_code == 200
    wrong = gw.client.post(f"/api/blobs/{digest_of(b'other')}", content=data)
    assert wrong.status_code == 400
    assert wrong.json() == {
        "error": f'digest mismatch, expected "{digest_of(b"other")}", got "{digest}"'
    }
    assert gw.ledger.latest(SpanFilter(), 10) == []  # not a metered call


class _Upstream(BaseHTTPRequestHandler):
    """Reads a blob as Ollama does, piece by piece, noting when the first MiB has come."""

    protocol_version = "HTTP/1.1"
    first_mib = threading.Event()
    received = 0

    def do_POST(self) -> None:
        assert "chunked" in self.headers.get("Transfer-Encoding", "")
        while size := int(self.rfile.readline().split(b";")[0], 16):
            type(self).received += len(self.rfile.read(size))
            self.rfile.readline()
            if type(self).received >= MIB:
                self.first_mib.set()
        self.rfile.readline()
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_blob_reaches_ollama_as_it_arrives_not_once_held_whole(
    serve_on: Callable[..., Gateway], upstream: str, sqlite_url: str
) -> None:
    """The rest of the upload is sent only once Ollama has had its first MiB: a gateway that
    read the whole body before forwarding would never forward it (and held 4 GB for a 4 GB model)."""
    gw = serve_on(upstream, sqlite_url, allow_admin=True)
    piece = b"\1" * (256 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(4):
            yield piece
        # A wait for the event, not a measure: it comes at once when the body is streamed.
        assert _Upstream.first_mib.wait(timeout=30), "Ollama had nothing before the body ended"
        for _ in range(12):
            yield piece

    reply = gw.client.post(f"/api/blobs/{digest_of(piece * 16)}", content=body())
    assert reply.status_code == 201
    assert _Upstream.received == 16 * len(piece)


def test_the_official_client_uploads_a_model_file_through_the_gateway(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, tmp_path: Path
) -> None:
    """``ollama.Client.create_blob``, as ``ollama create`` from a local GGUF calls it."""
    gw = serve_on(emulator.url, sqlite_url, allow_admin=True, max_body_bytes=MIB)
    model_file = tmp_path / "model.gguf"
    data = b"GGUF" + bytes(range(256)) * (5 * MIB // 256)
    model_file.write_bytes(data)
    digest = ollama.Client(host=gw.url).create_blob(model_file)
    assert digest == digest_of(data)
    assert emulator.blobs == {digest: len(data)}


def test_with_several_servers_a_model_is_created_where_its_blobs_went(
    serve_on: Callable[..., Gateway],
    emulators: Callable[..., OllamaEmulator],
    sqlite_url: str,
) -> None:
    """``ollama create`` uploads its blobs, then names them in ``/api/create``: both must reach
    the same server, or Ollama finds no blob. The blob names no model; a create named after a
    model another server has was sent there."""
    first, second = emulators("llama3.1:8b"), emulators("qwen2.5:7b")
    upstreams = f"{first.url},{second.url}"
    gw = serve_on(first.url, sqlite_url, config={"upstreams": upstreams}, allow_admin=True)
    data = b"GGUF" + b"\1" * 1000
    assert gw.client.post(f"/api/blobs/{digest_of(data)}", content=data).status_code == 201
    files = {"model.gguf": digest_of(data)}
    gw.client.post("/api/create", json={"model": "qwen2.5:7b", "files": files})
    assert first.blobs == {digest_of(data): len(data)}
    assert [r.body for r in first.requests_to("/api/create")] == [
        {"model": "qwen2.5:7b", "files": files}
    ]
    assert not second.requests_to("/api/create") and not second.blobs
