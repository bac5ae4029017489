"""Calls to Ollama through the official ``ollama`` client: classified, retried, behind a breaker.

``call`` (one answer) retries transient failures; ``stream`` (chunks as they
arrive) retries them only before its first chunk, since a stream retried after
that would show the caller a reply twice. Both go through the circuit breaker
as one unit per call (``_resilience.py``, the policy the gateway's relay uses
too). Async twins do the same with ``ollama.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import ollama

from ollama_meter.upstream._errors import classify
from ollama_meter.upstream._resilience import CallAttempts, CircuitBreaker, RetryPolicy, breaker_for

Message = Mapping[str, Any]
Response = ollama.ChatResponse | ollama.GenerateResponse | ollama.EmbedResponse
OPERATIONS = ("chat", "generate", "embed")


class Upstream:
    """One Ollama server. Holds pooled clients; safe to share between threads."""

    def __init__(
        self,
        host: str,
        *,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or breaker_for(host, threshold=3, reset_after=60.0)
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._headers = dict(headers or {})
        self.client = ollama.Client(host=host, timeout=self._timeout, headers=self._headers)
        self._async: ollama.AsyncClient | None = None

    @property
    def async_client(self) -> ollama.AsyncClient:
        if self._async is None:
            self._async = ollama.AsyncClient(
                host=self.host, timeout=self._timeout, headers=self._headers
            )
        return self._async

    def attempts(self, model: str) -> CallAttempts:
        """One call's passage through this upstream's breaker and retry policy."""
        return CallAttempts(self.breaker, self.retry, model)

    def call(self, operation: str, request: Mapping[str, Any]) -> Response:
        """One answer, retrying transient failures with backoff; raises a classified error."""
        method = getattr(self.client, operation)
        model = str(request.get("model", ""))
        attempts = self.attempts(model)
        while True:
            try:
                result: Response = method(**request, **_no_stream(operation))
            except Exception as exc:
                error = classify(exc, host=self.host, model=model, started=False)
                wait = attempts.retry_in(error)
                if wait is None:
                    raise error from exc
                time.sleep(wait)
                continue
            except BaseException as exc:  # Ctrl-C, SIGTERM
                attempts.end(exc)
                raise
            attempts.end()
            return result

    def stream(self, operation: str, request: Mapping[str, Any]) -> Iterator[Response]:
        """Ollama's chunks as they arrive; raises a classified error.

        A failure before the first chunk is retried like :meth:`call` (the caller has
        seen nothing yet); after it, never.
        """
        model = str(request.get("model", ""))
        attempts = self.attempts(model)
        while True:
            started = False
            try:
                for part in getattr(self.client, operation)(**request, stream=True):
                    started = True
                    yield part
            except Exception as exc:
                error = classify(exc, host=self.host, model=model, started=started)
                wait = attempts.retry_in(error, started=started)
                if wait is None:
                    raise error from exc
                time.sleep(wait)
                continue
            except BaseException as exc:  # the caller stopped reading, Ctrl-C
                attempts.end(exc)
                raise
            attempts.end()
            return

    async def acall(self, operation: str, request: Mapping[str, Any]) -> Response:
        method = getattr(self.async_client, operation)
        model = str(request.get("model", ""))
        attempts = self.attempts(model)
        while True:
            try:
                result: Response = await method(**request, **_no_stream(operation))
            except Exception as exc:
                error = classify(exc, host=self.host, model=model, started=False)
                wait = attempts.retry_in(error)
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)
                continue
            except BaseException as exc:
                attempts.end(exc)
                raise
            attempts.end()
            return result

    async def astream(self, operation: str, request: Mapping[str, Any]) -> AsyncIterator[Response]:
        model = str(request.get("model", ""))
        attempts = self.attempts(model)
        while True:
            started = False
            try:
                async for part in await getattr(self.async_client, operation)(
                    **request, stream=True
                ):
                    started = True
                    yield part
            except Exception as exc:
                error = classify(exc, host=self.host, model=model, started=started)
                wait = attempts.retry_in(error, started=started)
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)
                continue
            except BaseException as exc:
                attempts.end(exc)
                raise
            attempts.end()
            return

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _no_stream(operation: str) -> dict[str, Any]:
    return {} if operation == "embed" else {"stream": False}
