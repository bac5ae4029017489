"""Routing: which method and path each request goes to, and the record of every request.

Paths Ollama knows answer 405 for a method they do not take; unknown paths 404,
as Go's mux does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ollama_meter.testing._manage import ManageRoutes
from ollama_meter.testing._messages import MessagesRoutes
from ollama_meter.testing._ollama import OllamaRoutes
from ollama_meter.testing._wire import OLLAMA_VERSION


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it.

    ``body`` is the parsed JSON (None when absent or not JSON); ``headers`` has
    lower-cased names. ``target`` is the request target as sent: the path (and query), or
    a whole URL (``http://ollama.invalid:11434/api/chat``) from a client sending through
    this emulator as its HTTP proxy, which it answers as Ollama does (Go's server routes
    such a request by its path).
    """

    method: str
    path: str
    query: str
    body: Any
    headers: dict[str, str]
    target: str = ""


_INFERENCE = frozenset({
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages",
})  # fmt: skip
"""Routes that occupy the server while they run (counted in ``OllamaEmulator.most_in_flight``)."""
BLOBS = "/api/blobs/"
OPENAI_MODEL = "/v1/models/"
"""Where Ollama shows one model to OpenAI clients: ``GET /v1/models/{model}``."""


class RoutingHandler(OllamaRoutes, ManageRoutes, MessagesRoutes):
    _GET_PATHS: ClassVar[set[str]] = {"/", "/api/version", "/api/tags", "/api/ps", "/v1/models"}
    _HEAD_PATHS: ClassVar[set[str]] = {"/", "/api/version", "/api/tags"}
    _POST_PATHS: ClassVar[set[str]] = {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }

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

    def _dispatch(self, method: str) -> None:
        path, _, query = _origin(self.path).partition("?")
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
                target=self.path,
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
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/push"): self._push,
            ("POST", "/api/create"): self._create,
            ("POST", "/api/copy"): self._copy,
            ("DELETE", "/api/delete"): self._delete,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
            ("POST", "/v1/chat/completions"): self._openai_chat,
            ("POST", "/v1/completions"): self._openai_completions,
            ("POST", "/v1/embeddings"): self._openai_embeddings,
            ("POST", "/v1/responses"): self._openai_responses,
            ("POST", "/v1/messages"): self._anthropic_messages,
        }
        # HEAD answers carry GET's headers but never a body.
        self._head = method == "HEAD"
        handler = routes.get((method, path))
        if handler is None and method == "GET" and path.startswith(OPENAI_MODEL):
            handler = functools.partial(self._openai_model, path.removeprefix(OPENAI_MODEL))
        if handler is None and method in ("HEAD", "POST") and path.startswith(BLOBS):
            handler = functools.partial(self._blob, path.removeprefix(BLOBS))
        if handler is not None and path in _INFERENCE:
            self._occupy()
            try:
                handler(raw)
            finally:
                self._release()
        elif handler is not None:
            handler(raw)
        elif path in self._GET_PATHS | self._HEAD_PATHS | self._POST_PATHS | {"/api/delete"}:
            self._send_text(405, "405 method not allowed")
        else:
            self._send_text(404, "404 page not found")


def _origin(target: str) -> str:
    """The path (and query) of a request ``target``: a whole URL's (absolute form, sent to a
    proxy) as Go's server reads it, else the target as sent."""
    url = urllib.parse.urlsplit(target)
    if not (url.scheme and url.netloc):
        return target
    return (url.path or "/") + (f"?{url.query}" if url.query else "")
