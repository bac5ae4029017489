"""An in-process HTTP server that answers like Ollama, for tests and the demo.

Owns the wire: routing, Ollama's and the OpenAI-compatible JSON shapes (Go's
compact, HTML-escaped encoding, field order, ``omitempty``), NDJSON and SSE
streaming over chunked transfer encoding, error bodies, the warm/cold model
state, the record of received requests, and run-time fault injection
(:class:`Fault`). Replies themselves come from :mod:`._models`.

Standard library only: it must run wherever the package is installed.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from ollama_meter.testing._models import (
    DEFAULT_MODELS,
    OVERHEAD_NS,
    WARM_LOAD_NS,
    EmulatedModel,
    ExpectedReply,
    count_tokens,
    expected_embedding,
    find_model,
    generate_texts,
    message_texts,
    normalize_name,
    reply_for_texts,
)

OLLAMA_VERSION = "0.11.10"
"""What /api/version reports."""

HANG_LIMIT_S = 30.0
"""A :attr:`Fault.HANG` request gives up (closing the connection) after this long."""

KEEP_ALIVE = timedelta(minutes=5)

# Ollama's own words for the faults it can really produce.
ERROR_500 = "llama runner process has terminated: exit status 2"
ERROR_503 = "server busy, please try again.  maximum pending requests exceeded"
ERROR_MIDSTREAM = "an error was encountered while running the model: unexpected EOF"

_MODIFIED_AT = datetime(2025, 1, 15, 9, 30, 0, tzinfo=UTC)


class Fault(StrEnum):
    """Ways the emulated Ollama can misbehave, armed with :meth:`OllamaEmulator.inject`."""

    HTTP_500 = "http_500"
    """Answer 500 with an Ollama ``{"error": ...}`` body before any output."""
    HTTP_503 = "http_503"
    """Answer 503 (server busy); arm with ``times=N`` for a flaky upstream."""
    MIDSTREAM_ERROR = "midstream_error"
    """Stream ``after_tokens`` chunks, then an ``{"error": ...}`` line, then end
    the body cleanly; a non-streamed request gets a 500 instead."""
    DROP = "drop"
    """Stream ``after_tokens`` chunks, then close the socket without finishing the
    body; a non-streamed request is closed with no response at all."""
    OMIT_COUNTS = "omit_counts"
    """Answer normally but leave ``prompt_eval_count`` and ``eval_count`` out."""
    HANG = "hang"
    """Accept the request and send nothing until the client leaves, :meth:`stop`
    is called, or :data:`HANG_LIMIT_S` passes."""
    ERROR_DONE = "error_done"
    """On ``/api/chat`` and ``/api/generate``: stream ``after_tokens`` chunks, then
    end with ``{"done": true, "done_reason": "error", "error": ...}``, as an
    Ollama-compatible proxy does when its backend dies; a non-streamed request
    gets that object with status 200. Elsewhere it acts as MIDSTREAM_ERROR."""
    NO_USAGE = "no_usage"
    """On ``/v1`` generation routes: leave the usage out of a whole answer, and
    send no usage chunk even when ``stream_options.include_usage`` asks for it."""
    NO_ROUTE = "no_route"
    """Answer ``404 page not found`` (text/plain), as an Ollama too old to have
    the route does."""


_CUT_SHORT = frozenset({Fault.MIDSTREAM_ERROR, Fault.DROP, Fault.ERROR_DONE})
"""Faults that stream ``after_tokens`` chunks and then fail."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it.

    ``body`` is the parsed JSON (None when absent or not JSON); ``headers`` has
    lower-cased names.
    """

    method: str
    path: str
    query: str
    body: Any
    headers: dict[str, str]


@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int
    model: str | None
    after_tokens: int


@dataclass
class _State:
    """Everything mutable, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[_ArmedFault] = field(default_factory=list)
    loaded: dict[str, datetime] = field(default_factory=dict)
    completions: int = 0
    hangups: int = 0


class _Refusal(Exception):
    """A request Ollama would answer with an error status and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Aborted(Exception):
    """The emulator stopped or the client left while a reply was pending."""


def go_json(obj: object) -> bytes:
    """``obj`` encoded as Go's ``json.Marshal`` does: compact, UTF-8, HTML-escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # These characters can only occur inside JSON strings, so a plain replace is safe.
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text.encode("utf-8", "replace")


def rfc3339_nano(ns: int | None = None) -> str:
    """A UTC timestamp as Go's ``time.Time`` marshals it (RFC 3339, nanoseconds trimmed)."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _stamp(moment: datetime) -> str:
    return rfc3339_nano(int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000)


def _go_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _decode_body(raw: bytes, go_type: str) -> dict[str, Any]:
    """The JSON object in ``raw``, or the 400 Ollama's Go decoder would give."""
    if not raw.strip():
        raise _Refusal(400, "missing request body")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise _Refusal(400, "unexpected EOF") from None
        char = exc.doc[exc.pos]
        raise _Refusal(400, f"invalid character {char!r} looking for beginning of value") from None
    except UnicodeDecodeError:
        raise _Refusal(400, "invalid character looking for beginning of value") from None
    if not isinstance(value, dict):
        raise _Refusal(
            400, f"json: cannot unmarshal {_go_type(value)} into Go value of type {go_type}"
        )
    return value


def _unmarshal_error(value: object, go_field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {_go_type(value)} into Go struct field {go_field} of type {go_type}"


def _model_field(body: Mapping[str, Any], go_type: str) -> str:
    name = body.get("model")
    if name is None or name == "":
        raise _Refusal(400, "model is required")
    if not isinstance(name, str):
        raise _Refusal(400, _unmarshal_error(name, f"{go_type.rpartition('.')[2]}.model", "string"))
    return name


def _not_found(name: str) -> _Refusal:
    # Go's %q: double quotes, with backslash escapes.
    return _Refusal(404, f"model {json.dumps(name)} not found, try pulling it first")


def _details(model: EmulatedModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _modified_at(index: int) -> datetime:
    return _MODIFIED_AT - timedelta(days=index)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads are daemons and are unblocked by stop(), so never join them.
    block_on_close = False
    # socketserver's default backlog of 5 resets bursts of concurrent clients.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: OllamaEmulator) -> None:
        self.emulator = emulator
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-stream all the time; that is not worth a traceback,
        # but a bug in the emulator is.
        if not isinstance(sys.exc_info()[1], OSError | _Aborted):
            super().handle_error(request, client_address)

    def sever_all(self) -> None:
        """Close every open connection, so idle keep-alives and pending replies end now."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Like Go's net/http: each streamed chunk leaves at once instead of waiting on Nagle.
    disable_nagle_algorithm = True
    server: _Server
    _head = False

    _GET_PATHS: ClassVar[set[str]] = {"/", "/api/version", "/api/tags", "/api/ps", "/v1/models"}
    _HEAD_PATHS: ClassVar[set[str]] = {"/", "/api/version", "/api/tags"}
    _POST_PATHS: ClassVar[set[str]] = {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }

    # --- plumbing -------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go's net/http sends no Server header; keep only the status line and Date.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def handle_one_request(self) -> None:
        # A client that hangs up, or a deliberate drop, just ends this connection.
        try:
            super().handle_one_request()
        except (OSError, _Aborted):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    @property
    def emulator(self) -> OllamaEmulator:
        return self.server.emulator

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                try:
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    size = 0
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: object, *, newline: bool = False) -> None:
        body = go_json(obj) + (b"\n" if newline else b"")
        self._send(status, body, "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        except OSError:
            self.emulator._hung_up()
            raise

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        """Hang up abruptly: no more bytes, not even the end of a chunked body."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Aborted

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and self.server.stopping.wait(seconds):
            self._drop()

    def _hang(self) -> None:
        """Say nothing until the client leaves, the emulator stops, or the limit passes."""
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break
                except OSError:
                    break
                # A pipelined request is waiting; keep hanging without spinning.
                self.server.stopping.wait(0.05)
        self._drop()

    # --- routing --------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        raw = self._read_body()
        parsed: Any = None
        if raw.strip():
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        self.emulator._record(
            RecordedRequest(
                method=method,
                path=path,
                query=query,
                body=parsed,
                headers={k.lower(): v for k, v in self.headers.items()},
            )
        )
        routes: dict[tuple[str, str], Callable[[bytes], None]] = {
            ("GET", "/"): lambda _: self._send_text(200, "Ollama is running"),
            ("HEAD", "/"): lambda _: self._send_text(200, "Ollama is running"),
            ("GET", "/api/version"): lambda _: self._send_json(200, {"version": OLLAMA_VERSION}),
            ("HEAD", "/api/version"): lambda _: self._send_json(200, {"version": OLLAMA_VERSION}),
            ("GET", "/api/tags"): lambda _: self._send_json(200, self.emulator._tags()),
            ("HEAD", "/api/tags"): lambda _: self._send_json(200, self.emulator._tags()),
            ("GET", "/api/ps"): lambda _: self._send_json(200, self.emulator._ps()),
            ("GET", "/v1/models"): lambda _: self._send_json(
                200, self.emulator._openai_models(), newline=True
            ),
            ("POST", "/api/show"): self._show,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
            ("POST", "/v1/chat/completions"): self._openai_chat,
            ("POST", "/v1/completions"): self._openai_completions,
            ("POST", "/v1/embeddings"): self._openai_embeddings,
        }
        # HEAD answers carry GET's headers but never a body.
        self._head = method == "HEAD"
        handler = routes.get((method, path))
        if handler is not None:
            handler(raw)
        elif path in self._GET_PATHS | self._HEAD_PATHS | self._POST_PATHS:
            self._send_text(405, "405 method not allowed")
        else:
            self._send_text(404, "404 page not found")

    # --- Ollama endpoints -----------------------------------------------------

    def _ollama_error(self, exc: _Refusal) -> None:
        self._send_json(exc.status, {"error": exc.message})

    def _lookup(self, name: str) -> EmulatedModel:
        model = find_model(self.emulator.models, name)
        if model is None:
            raise _not_found(name)
        return model

    def _show(self, raw: bytes) -> None:
        try:
            body = _decode_body(raw, "api.ShowRequest")
            name = body.get("model") or body.get("name")
            if not isinstance(name, str) or not name:
                raise _Refusal(400, "model is required")
            model = find_model(self.emulator.models, name)
            if model is None:
                raise _Refusal(404, f"model '{name}' not found")
        except _Refusal as exc:
            self._ollama_error(exc)
            return
        self._send_json(200, self.emulator._show(model))

    def _chat(self, raw: bytes) -> None:
        try:
            body = _decode_body(raw, "api.ChatRequest")
            name = _model_field(body, "api.ChatRequest")
            model = self._lookup(name)
            if model.embedding:
                raise _Refusal(400, f"{json.dumps(name)} does not support chat")
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise _Refusal(
                    400, _unmarshal_error(messages, "ChatRequest.messages", "[]api.Message")
                )
            for message in messages:
                if not isinstance(message, dict):
                    raise _Refusal(
                        400, _unmarshal_error(message, "ChatRequest.messages", "api.Message")
                    )
            options = _options(body)
        except _Refusal as exc:
            self._ollama_error(exc)
            return
        self._complete(
            kind="chat",
            name=name,
            model=model,
            texts=message_texts(messages),
            options=options,
            stream=body.get("stream") is not False,
            load_only=not messages,
            unload=_keep_alive_zero(body),
        )

    def _generate(self, raw: bytes) -> None:
        try:
            body = _decode_body(raw, "api.GenerateRequest")
            name = _model_field(body, "api.GenerateRequest")
            model = self._lookup(name)
            if model.embedding:
                raise _Refusal(400, f"{json.dumps(name)} does not support generate")
            prompt = body.get("prompt") or ""
            system = body.get("system") or None
            if not isinstance(prompt, str):
                raise _Refusal(400, _unmarshal_error(prompt, "GenerateRequest.prompt", "string"))
            if system is not None and not isinstance(system, str):
                raise _Refusal(400, _unmarshal_error(system, "GenerateRequest.system", "string"))
            options = _options(body)
        except _Refusal as exc:
            self._ollama_error(exc)
            return
        self._complete(
            kind="generate",
            name=name,
            model=model,
            texts=generate_texts(prompt, system),
            options=options,
            stream=body.get("stream") is not False,
            load_only=not prompt,
            unload=_keep_alive_zero(body),
            raw_mode=bool(body.get("raw")),
        )

    def _complete(
        self,
        *,
        kind: str,
        name: str,
        model: EmulatedModel,
        texts: list[str],
        options: Mapping[str, Any] | None,
        stream: bool,
        load_only: bool,
        unload: bool,
        raw_mode: bool = False,
    ) -> None:
        emu = self.emulator
        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        streaming = stream and not load_only
        if fault is Fault.NO_ROUTE:
            self._send_text(404, "404 page not found")
            return
        if fault is Fault.HTTP_500 or (fault is Fault.MIDSTREAM_ERROR and not streaming):
            self._send_json(
                500, {"error": ERROR_500 if fault is Fault.HTTP_500 else ERROR_MIDSTREAM}
            )
            return
        if fault is Fault.HTTP_503:
            self._send_json(503, {"error": ERROR_503})
            return
        if fault is Fault.HANG:
            self._hang()
        if fault is Fault.DROP and not streaming:
            self._drop()

        def envelope(piece: str | None) -> dict[str, Any]:
            head: dict[str, Any] = {"model": name, "created_at": rfc3339_nano()}
            if kind == "chat":
                head["message"] = {"role": "assistant", "content": piece or ""}
            else:
                head["response"] = piece or ""
            return head

        if load_only:
            if unload:
                emu._unload(model)
            else:
                emu._warm(model)
            done = envelope(None)
            reason = "unload" if unload else "load"
            if kind == "chat":
                done.update({"done_reason": reason, "done": True})
            else:
                done.update({"done": True, "done_reason": reason})
            self._send_json(200, done)
            return

        reply = reply_for_texts(model, texts, options)
        cold = emu._warm(model)
        final = envelope(None)
        metrics = reply.metrics(cold=cold)
        if fault is Fault.OMIT_COUNTS:
            metrics.pop("prompt_eval_count", None)
            metrics.pop("eval_count", None)
        if kind == "chat":
            final.update({"done_reason": reply.done_reason, "done": True})
        else:
            final.update({"done": True, "done_reason": reply.done_reason})
            if not raw_mode:
                final["context"] = _context_tokens(texts, reply)
        final.update(metrics)

        if fault is Fault.ERROR_DONE:
            final = envelope(None)
            final.update({"done": True, "done_reason": "error", "error": ERROR_MIDSTREAM})
        if not streaming:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            final["created_at"] = rfc3339_nano()
            if fault is not Fault.ERROR_DONE:
                if kind == "chat":
                    final["message"]["content"] = reply.content
                else:
                    final["response"] = reply.content
            self._send_json(200, final)
            return

        self._pause(emu.latency)
        self._start_chunked("application/x-ndjson")
        limit = armed.after_tokens if armed and fault in _CUT_SHORT else None
        for index, piece in enumerate(reply.pieces):
            if limit is not None and index >= limit:
                break
            if index:
                self._pause(emu.token_latency)
            chunk = envelope(piece)
            chunk["done"] = False
            self._write_chunk(go_json(chunk) + b"\n")
        if fault is Fault.DROP:
            self._drop()
        if fault is Fault.MIDSTREAM_ERROR:
            self._write_chunk(go_json({"error": ERROR_MIDSTREAM}) + b"\n")
            self._end_chunked()
            return
        if reply.pieces:
            self._pause(emu.token_latency)
        final["created_at"] = rfc3339_nano()
        self._write_chunk(go_json(final) + b"\n")
        self._end_chunked()

    def _embed_inputs(self, body: Mapping[str, Any], key: str) -> list[str]:
        value = body.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _Refusal(400, "invalid input type")

    def _embed_common(
        self, raw: bytes, key: str, go_type: str
    ) -> tuple[str, EmulatedModel, list[str], _ArmedFault | None]:
        body = _decode_body(raw, go_type)
        inputs = self._embed_inputs(body, key)
        name = _model_field(body, go_type)
        model = self._lookup(name)
        return name, model, inputs, self.emulator._take_fault(model)

    def _embed_fault(self, armed: _ArmedFault | None) -> bool:
        """Act on a fault that ends an embedding request early; True when it did."""
        fault = armed.fault if armed else None
        if fault is Fault.NO_ROUTE:
            self._send_text(404, "404 page not found")
            return True
        if fault in (Fault.HTTP_500, Fault.MIDSTREAM_ERROR, Fault.ERROR_DONE):
            self._send_json(500, {"error": ERROR_500})
            return True
        if fault is Fault.HTTP_503:
            self._send_json(503, {"error": ERROR_503})
            return True
        if fault is Fault.HANG:
            self._hang()
        if fault is Fault.DROP:
            self._drop()
        return False

    def _embed(self, raw: bytes) -> None:
        try:
            name, model, inputs, armed = self._embed_common(raw, "input", "api.EmbedRequest")
        except _Refusal as exc:
            self._ollama_error(exc)
            return
        if self._embed_fault(armed):
            return
        self._pause(self.emulator.latency)
        cold = self.emulator._warm(model)
        out: dict[str, Any] = {"model": name}
        if not inputs:
            self._send_json(200, out)
            return
        tokens = sum(count_tokens(text) for text in inputs)
        load = model.load_ns if cold else WARM_LOAD_NS
        prompt_ns = tokens * model.prompt_ns_per_token
        out["embeddings"] = [
            expected_embedding(model, text, models=self.emulator.models) for text in inputs
        ]
        metrics = {
            "total_duration": load + prompt_ns + OVERHEAD_NS,
            "load_duration": load,
            "prompt_eval_count": 0 if armed and armed.fault is Fault.OMIT_COUNTS else tokens,
        }
        out.update({k: v for k, v in metrics.items() if v})
        self._send_json(200, out)

    def _embeddings(self, raw: bytes) -> None:
        try:
            _, model, inputs, armed = self._embed_common(raw, "prompt", "api.EmbeddingRequest")
        except _Refusal as exc:
            self._ollama_error(exc)
            return
        if self._embed_fault(armed):
            return
        self._pause(self.emulator.latency)
        self.emulator._warm(model)
        vector = expected_embedding(model, inputs[0], models=self.emulator.models) if inputs else []
        self._send_json(200, {"embedding": vector})

    # --- OpenAI-compatible endpoints ------------------------------------------

    def _openai_error(self, status: int, message: str) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        self._send_json(
            status,
            {"error": {"message": message, "type": kind, "param": None, "code": None}},
            newline=True,
        )

    def _openai_chat(self, raw: bytes) -> None:
        self._openai_generation(raw, chat=True)

    def _openai_completions(self, raw: bytes) -> None:
        self._openai_generation(raw, chat=False)

    def _openai_generation(self, raw: bytes, *, chat: bool) -> None:
        """``/v1/chat/completions`` (``chat``) or ``/v1/completions``: same flow, two shapes."""
        emu = self.emulator
        go_type = "openai.ChatCompletionRequest" if chat else "openai.CompletionRequest"
        try:
            body = _decode_body(raw, go_type)
            if chat:
                messages = body.get("messages") or []
                if not isinstance(messages, list) or not messages:
                    raise _Refusal(400, "[] is too short - 'messages'")
                texts = _openai_texts(messages)
            else:
                prompt = body.get("prompt", "")
                if not isinstance(prompt, str):
                    raise _Refusal(400, "prompt must be a string")
                texts = [prompt]
            name = _model_field(body, go_type)
            model = self._lookup(name)
            if model.embedding:
                what = "chat" if chat else "generate"
                raise _Refusal(400, f"{json.dumps(name)} does not support {what}")
            options: dict[str, Any] = {}
            max_tokens = body.get("max_tokens")
            if isinstance(max_tokens, int | float) and not isinstance(max_tokens, bool):
                options["num_predict"] = int(max_tokens)
        except _Refusal as exc:
            self._openai_error(exc.status, exc.message)
            return
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )

        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        if fault is Fault.ERROR_DONE:
            fault = Fault.MIDSTREAM_ERROR
        if fault is Fault.NO_ROUTE:
            self._send_text(404, "404 page not found")
            return
        if fault is Fault.HTTP_500 or (fault is Fault.MIDSTREAM_ERROR and not stream):
            self._openai_error(500, ERROR_500 if fault is Fault.HTTP_500 else ERROR_MIDSTREAM)
            return
        if fault is Fault.HTTP_503:
            self._openai_error(503, ERROR_503)
            return
        if fault is Fault.HANG:
            self._hang()
        if fault is Fault.DROP and not stream:
            self._drop()

        reply = reply_for_texts(model, texts, options)
        emu._warm(model)
        counted = fault is not Fault.OMIT_COUNTS
        prompt_tokens = reply.prompt_tokens if counted else 0
        output_tokens = reply.output_tokens if counted else 0
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        }
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{emu._next_completion_id()}"
        created = int(time.time())

        def choice(content: str, finish: str | None, key: str) -> dict[str, Any]:
            if not chat:
                return {"text": content, "index": 0, "finish_reason": finish}
            message = {"role": "assistant", "content": content}
            return {"index": 0, key: message, "finish_reason": finish}

        if not stream:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            completion = {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [choice(reply.content, reply.done_reason, "message")],
                "usage": usage,
            }
            if fault is Fault.NO_USAGE:
                del completion["usage"]
            self._send_json(200, completion, newline=True)
            return

        def chunk(content: str, finish: str | None) -> dict[str, Any]:
            if not chat:  # Ollama's CompletionChunk puts choices before model
                return {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "choices": [choice(content, finish, "delta")],
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                }
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [choice(content, finish, "delta")],
            }

        def event(obj: object) -> bytes:
            return b"data: " + go_json(obj) + b"\n\n"

        self._pause(emu.latency)
        self._start_chunked("text/event-stream")
        limit = armed.after_tokens if armed and fault in _CUT_SHORT else None
        for index, piece in enumerate(reply.pieces):
            if limit is not None and index >= limit:
                break
            if index:
                self._pause(emu.token_latency)
            self._write_chunk(event(chunk(piece, None)))
        if fault is Fault.DROP:
            self._drop()
        if fault is Fault.MIDSTREAM_ERROR:
            error = {"message": ERROR_MIDSTREAM, "type": "api_error", "param": None, "code": None}
            self._write_chunk(event({"error": error}))
            self._end_chunked()
            return
        if reply.pieces:
            self._pause(emu.token_latency)
        last = chunk("", reply.done_reason)
        self._write_chunk(event(last))
        if include_usage and fault is not Fault.NO_USAGE:
            last["choices"] = []
            last["usage"] = usage
            self._write_chunk(event(last))
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_chunked()

    def _openai_embeddings(self, raw: bytes) -> None:
        try:
            body = _decode_body(raw, "openai.EmbedRequest")
            value = body.get("input")
            if value == "" or value is None or value == []:
                raise _Refusal(400, "invalid input")
            inputs = self._embed_inputs(body, "input")
            name = _model_field(body, "openai.EmbedRequest")
            model = self._lookup(name)
        except _Refusal as exc:
            self._openai_error(exc.status, exc.message)
            return
        armed = self.emulator._take_fault(model)
        fault = armed.fault if armed else None
        if fault is Fault.NO_ROUTE:
            self._send_text(404, "404 page not found")
            return
        if fault in (Fault.HTTP_500, Fault.MIDSTREAM_ERROR, Fault.ERROR_DONE, Fault.HTTP_503):
            status = 503 if fault is Fault.HTTP_503 else 500
            self._openai_error(status, ERROR_503 if status == 503 else ERROR_500)
            return
        if fault is Fault.HANG:
            self._hang()
        if fault is Fault.DROP:
            self._drop()
        self._pause(self.emulator.latency)
        self.emulator._warm(model)
        tokens = 0 if fault is Fault.OMIT_COUNTS else sum(count_tokens(t) for t in inputs)
        data = [
            {
                "object": "embedding",
                "embedding": expected_embedding(model, text, models=self.emulator.models),
                "index": index,
            }
            for index, text in enumerate(inputs)
        ]
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            newline=True,
        )


def _options(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    options = body.get("options")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise _Refusal(400, _unmarshal_error(options, "options", "map[string]interface {}"))
    value = options.get("num_predict")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _Refusal(500, 'option "num_predict" must be of type integer')
    return options


def _keep_alive_zero(body: Mapping[str, Any]) -> bool:
    value = body.get("keep_alive")
    return value is not None and not isinstance(value, bool) and value in (0, "0", "0s", "0m")


def _openai_texts(messages: Sequence[Any]) -> list[str]:
    """Message texts the way Ollama's OpenAI layer splits them: one per text part."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise _Refusal(400, "invalid message format")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise _Refusal(400, "invalid message format")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        elif content is None and message.get("tool_calls"):
            texts.append("")
        else:
            raise _Refusal(400, f"invalid message content type: {_go_type(content)}")
    return texts


def _context_tokens(texts: Sequence[str], reply: ExpectedReply) -> list[int]:
    """A stand-in for the token ids Ollama returns as ``context`` on generate."""
    words = [w for text in texts for w in text.split()] + [p.strip() for p in reply.pieces]
    return [1 + sum(word.encode()) % 128_000 for word in words]


class OllamaEmulator:
    """A local HTTP server that speaks Ollama's REST API with deterministic replies.

    Use as a context manager (or :meth:`start` / :meth:`stop`); point a client at
    :attr:`url`. Replies, token counts and durations follow :func:`expected_reply`;
    the first call to a model after start or :meth:`reset` is cold (reports the
    model's ``load_ns``), later ones are warm. ``latency`` is real wall time slept
    before the first byte of an inference reply and ``token_latency`` between
    streamed chunks (a non-streamed reply waits the same total); both may be
    changed at any time. Every request is recorded in :attr:`requests`.

    Faults armed with :meth:`inject` are consumed by inference requests (chat,
    generate, embed and their OpenAI twins) that pass validation: malformed JSON,
    a missing or unknown model get their usual error and leave faults armed.

    After :meth:`stop`, :meth:`start` listens again on the same port.
    """

    def __init__(
        self,
        models: Sequence[EmulatedModel] = DEFAULT_MODELS,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        token_latency: float = 0.0,
    ) -> None:
        self.models: tuple[EmulatedModel, ...] = tuple(models)
        self.host = host
        self.latency = latency
        self.token_latency = token_latency
        self._port = port
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> OllamaEmulator:
        """Start listening (in a daemon thread); returns self. Idempotent."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ollama-emulator:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, hanging streams included."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.sever_all()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OllamaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator has no port until start() is called")
        return self._port

    @property
    def host_port(self) -> str:
        """``HOST:PORT``, the form ``OLLAMA_HOST`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the base URL to give a client."""
        return f"http://{self.host_port}"

    # --- test controls --------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received since start or :meth:`reset`, oldest first."""
        with self._state.lock:
            return list(self._state.requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests whose path is ``path`` (e.g. ``"/api/chat"``)."""
        return [r for r in self.requests if r.path == path]

    def inject(
        self,
        fault: Fault,
        times: int = 1,
        model: str | None = None,
        after_tokens: int = 3,
    ) -> None:
        """Arm ``fault`` for the next ``times`` inference requests (to ``model`` only, if given).

        ``after_tokens`` is how many token chunks :attr:`Fault.MIDSTREAM_ERROR` and
        :attr:`Fault.DROP` stream before failing. Armed faults fire in the order
        they were injected.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if after_tokens < 0:
            raise ValueError("after_tokens must not be negative")
        armed = _ArmedFault(
            Fault(fault), times, normalize_name(model) if model else None, after_tokens
        )
        with self._state.lock:
            self._state.faults.append(armed)

    @property
    def pending_faults(self) -> int:
        """How many armed fault firings are left."""
        with self._state.lock:
            return sum(f.remaining for f in self._state.faults)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def reset(self) -> None:
        """Forget requests, faults and hang-ups, and unload every model (the next call is cold)."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.faults.clear()
            self._state.loaded.clear()
            self._state.hangups = 0

    @property
    def hangups(self) -> int:
        """Streamed replies the client hung up on before their end (what Ollama then stops)."""
        with self._state.lock:
            return self._state.hangups

    def is_loaded(self, model: str) -> bool:
        """Whether ``model`` is warm (a call to it since start or reset)."""
        with self._state.lock:
            return normalize_name(model) in self._state.loaded

    # --- used by the handler --------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(request)

    def _hung_up(self) -> None:
        with self._state.lock:
            self._state.hangups += 1

    def _take_fault(self, model: EmulatedModel) -> _ArmedFault | None:
        key = normalize_name(model.name)
        with self._state.lock:
            for armed in self._state.faults:
                if armed.model is None or armed.model == key:
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self._state.faults.remove(armed)
                    return armed
        return None

    def _warm(self, model: EmulatedModel) -> bool:
        """Mark ``model`` loaded; True when it was cold."""
        key = normalize_name(model.name)
        with self._state.lock:
            cold = key not in self._state.loaded
            self._state.loaded[key] = datetime.now(UTC) + KEEP_ALIVE
            return cold

    def _unload(self, model: EmulatedModel) -> None:
        with self._state.lock:
            self._state.loaded.pop(normalize_name(model.name), None)

    def _next_completion_id(self) -> int:
        with self._state.lock:
            self._state.completions += 1
            return self._state.completions % 1000

    def _tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": model.name,
                    "model": model.name,
                    "modified_at": _stamp(_modified_at(index)),
                    "size": model.size,
                    "digest": model.digest,
                    "details": _details(model),
                }
                for index, model in enumerate(self.models)
            ]
        }

    def _ps(self) -> dict[str, Any]:
        with self._state.lock:
            loaded = dict(self._state.loaded)
        running = [m for m in self.models if normalize_name(m.name) in loaded]
        running.sort(key=lambda m: loaded[normalize_name(m.name)], reverse=True)
        return {
            "models": [
                {
                    "name": model.name,
                    "model": model.name,
                    "size": model.size,
                    "digest": model.digest,
                    "details": _details(model),
                    "expires_at": _stamp(loaded[normalize_name(model.name)]),
                    "size_vram": model.size,
                    "context_length": model.context_length,
                }
                for model in running
            ]
        }

    def _show(self, model: EmulatedModel) -> dict[str, Any]:
        index = self.models.index(model)
        arch = model.family.replace("-", "")
        return {
            "license": "Emulated model: no license text.",
            "modelfile": (
                '# Modelfile generated by "ollama show"\n'
                "# To build a new Modelfile based on this, replace FROM with:\n"
                f"# FROM {model.name}\n\n"
                f"FROM {model.name}\n"
                'TEMPLATE "{{ .Prompt }}"\n'
            ),
            "parameters": f"{'num_ctx':<30} {model.context_length}",
            "template": "{{ .Prompt }}",
            "details": _details(model),
            "model_info": {
                "general.architecture": arch,
                "general.basename": model.name.split(":", 1)[0],
                f"{arch}.context_length": model.context_length,
                f"{arch}.embedding_length": model.embedding_dim,
            },
            "capabilities": ["embedding"] if model.embedding else ["completion"],
            "modified_at": _stamp(_modified_at(index)),
        }

    def _openai_models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": int(_modified_at(index).timestamp()),
                    "owned_by": "library",
                }
                for index, model in enumerate(self.models)
            ],
        }


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def unreachable_url() -> str:
    """A loopback URL with nothing listening, for "Ollama is down" tests."""
    return f"http://127.0.0.1:{unused_port()}"
