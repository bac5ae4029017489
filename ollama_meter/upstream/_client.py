"""Calls to Ollama through the official ``ollama`` client: classified, retried, behind a breaker.

``call`` (one answer) retries transient failures; ``stream`` (chunks as they
arrive) does not, since a retried stream would show the caller a reply twice.
Both go through the per-host circuit breaker. Async twins do the same with
``ollama.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import ollama

from ollama_meter.errors import CircuitOpen, UpstreamError
from ollama_meter.upstream._errors import classify
from ollama_meter.upstream._resilience import CircuitBreaker, RetryPolicy, breaker_for, is_transient

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

    def _fail(self, exc: BaseException, model: str, *, started: bool) -> UpstreamError:
        error = classify(exc, host=self.host, model=model, started=started)
        if not isinstance(error, CircuitOpen):
            self.breaker.failure(error)
        return error

    def call(self, operation: str, request: Mapping[str, Any]) -> Response:
        """One answer, retrying transient failures with backoff; raises a classified error."""
        method = getattr(self.client, operation)
        model = str(request.get("model", ""))
        for attempt in range(1, self.retry.retries + 2):
            self.breaker.before()
            try:
                result: Response = method(**request, **_no_stream(operation))
            except Exception as exc:
                error = self._fail(exc, model, started=False)
                if not is_transient(error) or attempt > self.retry.retries:
                    raise error from exc
                time.sleep(self.retry.delay(attempt))
                continue
            self.breaker.success()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, operation: str, request: Mapping[str, Any]) -> Iterator[Response]:
        """Ollama's chunks as they arrive; raises a classified error, never retries."""
        model = str(request.get("model", ""))
        self.breaker.before()
        started = False
        try:
            for part in getattr(self.client, operation)(**request, stream=True):
                started = True
                yield part
        except Exception as exc:
            raise self._fail(exc, model, started=started) from exc
        self.breaker.success()

    async def acall(self, operation: str, request: Mapping[str, Any]) -> Response:
        method = getattr(self.async_client, operation)
        model = str(request.get("model", ""))
        for attempt in range(1, self.retry.retries + 2):
            self.breaker.before()
            try:
                result: Response = await method(**request, **_no_stream(operation))
            except Exception as exc:
                error = self._fail(exc, model, started=False)
                if not is_transient(error) or attempt > self.retry.retries:
                    raise error from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            self.breaker.success()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def astream(self, operation: str, request: Mapping[str, Any]) -> AsyncIterator[Response]:
        model = str(request.get("model", ""))
        self.breaker.before()
        started = False
        try:
            async for part in await getattr(self.async_client, operation)(**request, stream=True):
                started = True
                yield part
        except Exception as exc:
            raise self._fail(exc, model, started=started) from exc
        self.breaker.success()

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _no_stream(operation: str) -> dict[str, Any]:
    return {} if operation == "embed" else {"stream": False}
