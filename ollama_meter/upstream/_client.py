"""Calls to Ollama through the official ``ollama`` client, with failures classified."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import ollama

from ollama_meter.upstream._errors import classify

Message = Mapping[str, Any]


class Upstream:
    """One Ollama server. Holds a pooled ``ollama.Client``; safe to share between threads."""

    def __init__(self, host: str, *, timeout: float = 300.0) -> None:
        self.host = host
        self.client = ollama.Client(host=host, timeout=httpx.Timeout(timeout, connect=10.0))

    def chat_stream(
        self, model: str, messages: Sequence[Message], options: Mapping[str, Any] | None = None
    ) -> Iterator[ollama.ChatResponse]:
        """Ollama's chunks as they arrive; raises a classified UpstreamError on failure."""
        started = False
        try:
            for part in self.client.chat(
                model=model, messages=messages, stream=True, options=options
            ):
                started = True
                yield part
        except Exception as exc:
            raise classify(exc, host=self.host, model=model, started=started) from exc

    def chat(
        self, model: str, messages: Sequence[Message], options: Mapping[str, Any] | None = None
    ) -> ollama.ChatResponse:
        try:
            return self.client.chat(model=model, messages=messages, stream=False, options=options)
        except Exception as exc:
            raise classify(exc, host=self.host, model=model, started=False) from exc

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
