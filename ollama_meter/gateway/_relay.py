"""Metered relay of one call: admit, forward, observe chunks as they pass, write the span.

The reply is streamed to the client line by line as Ollama sends it. The last
line (Ollama's ``done`` chunk, or the SSE ``[DONE]``) is held until the span is
in the ledger: a client that has its whole answer always has its span written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ollama
from starlette.responses import JSONResponse, Response, StreamingResponse

from ollama_meter.errors import (
    BudgetExceeded,
    CircuitOpen,
    LedgerError,
    StreamError,
    UpstreamError,
)
from ollama_meter.gateway._threads import in_thread
from ollama_meter.gateway._upstream import UpstreamPool, finish, gateway_status
from ollama_meter.meter import Attribution, Meter, MeteredCall
from ollama_meter.meter._request import facts_of, with_output_cap
from ollama_meter.upstream import classify, is_transient

OLLAMA_ROUTES = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
}
OPENAI_ROUTES = {
    "/v1/chat/completions": "openai.chat",
    "/v1/completions": "openai.completions",
    "/v1/embeddings": "openai.embeddings",
}
HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate", "authorization",
    "x-ometer-key", "x-ometer-tenant", "x-ometer-department", "x-ometer-user",
})  # fmt: skip


def error_response(
    openai: bool, status: int, message: str, *, headers: dict[str, str] | None = None
) -> Response:
    """Ollama's ``{"error": "..."}``, or OpenAI's error object on ``/v1``."""
    if openai:
        kind = "invalid_request_error" if status < 500 else "api_error"
        body: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": None, "code": None}
        }
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def forward_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def _ollama_part(
    operation: str, obj: dict[str, Any]
) -> ollama.ChatResponse | ollama.GenerateResponse | ollama.EmbedResponse | None:
    try:
        if operation == "chat":
            return ollama.ChatResponse(**obj)
        if operation == "generate":
            return ollama.GenerateResponse(**obj)
        if operation == "embed":
            return ollama.EmbedResponse(**obj)
    except Exception:  # a shape we do not know is relayed, not metered
        return None
    return None


def _openai_observe(call: MeteredCall, operation: str, obj: dict[str, Any]) -> bool:
    """Feed an OpenAI-shaped object to the call; True when it carried the usage."""
    choices = obj.get("choices") or []
    for choice in choices:
        delta = choice.get("delta") or choice.get("message") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        text = text if text is not None else choice.get("text")
        if text:
            call.observe(
                ollama.ChatResponse(message={"role": "assistant", "content": text}, done=False)
            )
    usage = obj.get("usage")
    if not usage:
        return False
    finish = (
        next((c.get("finish_reason") for c in choices if c.get("finish_reason")), None)
        or call.span.done_reason
    )
    call.observe(
        ollama.ChatResponse(
            model=obj.get("model"),
            message={"role": "assistant", "content": ""},
            done=True,
            done_reason=finish,
            prompt_eval_count=usage.get("prompt_tokens"),
            eval_count=0 if operation == "openai.embeddings" else usage.get("completion_tokens"),
        )
    )
    return True


class Relay:
    """One gateway, one upstream: relays metered calls through ``meter``."""

    def __init__(self, meter: Meter, pool: UpstreamPool) -> None:
        self.meter = meter
        self.pool = pool
        self.upstream = pool.base_url

    async def metered(
        self,
        path: str,
        body: dict[str, Any],
        raw_headers: Any,
        attribution: Attribution,
        query: str,
    ) -> Response:
        openai = path in OPENAI_ROUTES
        operation = OPENAI_ROUTES.get(path) or OLLAMA_ROUTES[path]
        default_stream = not openai and operation in ("chat", "generate")
        stream = bool(body.get("stream", default_stream)) and operation not in (
            "embed",
            "embeddings",
            "openai.embeddings",
        )
        hide_usage = False
        if openai and stream:
            options = body.get("stream_options") or {}
            if not options.get("include_usage"):
                # Ask for usage so the span has exact counts; the client never sees that chunk.
                body = {**body, "stream_options": {**options, "include_usage": True}}
                hide_usage = True

        def open_call() -> MeteredCall:
            return self.meter.open(
                operation=operation,
                model=str(body["model"]),
                stream=stream,
                attribution=attribution,
                facts=facts_of(operation, body),
            )

        try:
            # A budget reservation is a ledger transaction: off the loop. Without one, in place.
            call = await in_thread(open_call) if self.meter.reserves(attribution) else open_call()
        except BudgetExceeded as refused:
            return error_response(
                openai, 429, str(refused), headers={"Retry-After": str(refused.retry_after)}
            )
        except LedgerError as unchecked:  # a covering budget unchecked, or nothing can record
            return error_response(openai, 503, str(unchecked), headers={"Retry-After": "5"})
        if call.output_cap is not None:  # a hard budget admitted the call on this reply cap
            body = with_output_cap(operation, body, call.output_cap)
        sent = await self._send(call, path, body, raw_headers, query, openai, retry=not stream)
        if isinstance(sent, Response):
            return sent
        response = sent
        if not stream:
            return await self._whole(call, operation, openai, response)
        media = (
            "text/event-stream"
            if openai
            else response.headers.get("content-type", "application/x-ndjson")
        )
        return StreamingResponse(
            self._stream(call, operation, openai, response, hide_usage),
            media_type=media,
            headers={"cache-control": "no-cache"} if openai else None,
        )

    async def _send(
        self,
        call: MeteredCall,
        path: str,
        body: dict[str, Any],
        raw_headers: Any,
        query: str,
        openai: bool,
        *,
        retry: bool,
    ) -> aiohttp.ClientResponse | Response:
        """Ollama's 200 response, or the error answer for the client (the span is then closed).

        Through the circuit breaker; a non-streamed call is retried on transient failures
        (unreachable, silent, 5xx, 429) with the meter's backoff, never on a 4xx. Nothing
        has reached the client yet, so a retry is invisible to it.
        """
        breaker = self.meter.upstream.breaker
        policy = self.meter.upstream.retry
        attempts = 1 + (policy.retries if retry else 0)
        content = json.dumps(body).encode()
        headers = {**forward_headers(raw_headers), "content-type": "application/json"}
        for attempt in range(1, attempts + 1):
            try:
                breaker.before()
            except CircuitOpen as exc:
                await in_thread(self.meter.close, call, exc)
                wait = str(max(1, int(exc.retry_after)))
                return error_response(openai, 503, str(exc), headers={"Retry-After": wait})
            try:
                response = await self.pool.request(
                    "POST", path, body=content, query=query, headers=headers
                )
            except UpstreamError as error:  # unreachable (502) or silent (504)
                breaker.failure(error)
                if is_transient(error) and attempt < attempts:
                    await asyncio.sleep(policy.delay(attempt))
                    continue
                await in_thread(self.meter.close, call, error)
                return error_response(openai, gateway_status(error), str(error))
            if response.status == 200:
                return response
            try:
                answer = await self.pool.read(response)
            except UpstreamError as error:
                answer = json.dumps({"error": str(error)}).encode()
            finish(response, completed=True)
            failure = classify(
                ollama.ResponseError(answer.decode(errors="replace"), response.status),
                host=self.upstream,
                model=str(body["model"]),
                started=False,
            )
            breaker.failure(failure)
            if is_transient(failure) and attempt < attempts:
                await asyncio.sleep(policy.delay(attempt))
                continue
            await in_thread(self.meter.close, call, failure)
            return Response(
                answer, status_code=response.status, media_type=response.headers.get("content-type")
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _whole(
        self, call: MeteredCall, operation: str, openai: bool, response: aiohttp.ClientResponse
    ) -> Response:
        try:
            content = await self.pool.read(response)
        except UpstreamError as error:
            finish(response, completed=False)
            await in_thread(self.meter.close, call, error)
            return error_response(openai, 502, str(error))
        finish(response, completed=True)
        try:
            obj = json.loads(content)
        except ValueError:
            obj = {}
        if openai:
            _openai_observe(call, operation, obj)
        elif (part := _ollama_part(operation, obj)) is not None:
            call.observe(part)
        else:
            # legacy /api/embeddings reports no counts: the meter estimates them
            call.observe(ollama.EmbedResponse(model=obj.get("model"), embeddings=[]))
        self.meter.upstream.breaker.success()
        await in_thread(self.meter.close, call)
        return Response(
            content,
            status_code=200,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def _stream(
        self,
        call: MeteredCall,
        operation: str,
        openai: bool,
        response: aiohttp.ClientResponse,
        hide_usage: bool,
    ) -> AsyncIterator[bytes]:
        closed = False
        try:
            buffer = b""
            separator = b"\n\n" if openai else b"\n"
            async for data in self.pool.chunks(response):
                buffer += data
                while separator in buffer:
                    item, buffer = buffer.split(separator, 1)
                    if not item.strip():
                        continue
                    out, ending = self._observe_item(call, operation, openai, item, hide_usage)
                    if isinstance(ending, UpstreamError):
                        await in_thread(self.meter.close, call, ending)
                        closed = True
                        if out is not None:
                            yield out + separator  # the client sees Ollama's own error line
                        return
                    if ending:
                        self.meter.upstream.breaker.success()
                        await in_thread(self.meter.close, call)
                        closed = True
                    if out is not None:
                        yield out + separator
            if not closed:
                raise StreamError(
                    f"the stream from Ollama at {self.upstream} ended without its final chunk"
                )
        except BaseException as exc:
            if not closed:
                await in_thread(self.meter.close, call, exc)
                closed = True
            if isinstance(exc, UpstreamError):
                return  # end the body; the span says what broke
            raise
        finally:
            # Read to the end: the connection goes back to the pool. Cut short (the
            # client hung up, the stream broke): it is dropped, which stops Ollama.
            finish(response, completed=response.content.at_eof())

    def _observe_item(
        self, call: MeteredCall, operation: str, openai: bool, item: bytes, hide_usage: bool
    ) -> tuple[bytes | None, Any]:
        """What to send on for one line/event, and whether it ends the call."""
        if openai:
            text = item.decode(errors="replace").strip()
            if not text.startswith("data:"):
                return item, None
            payload = text[5:].strip()
            if payload == "[DONE]":
                return item, True
            try:
                obj = json.loads(payload)
            except ValueError:
                return item, None
            if "error" in obj and not obj.get("choices"):
                return item, StreamError(f"Ollama failed mid-stream: {obj['error']}")
            carried_usage = _openai_observe(call, operation, obj)
            if carried_usage and hide_usage and not obj.get("choices"):
                return None, None
            return item, None
        try:
            obj = json.loads(item)
        except ValueError:
            return item, None
        if obj.get("error") and not obj.get("done"):
            return item, StreamError(f"Ollama failed mid-stream: {obj['error']}")
        part = _ollama_part(operation, obj)
        if part is not None:
            call.observe(part)
            if getattr(part, "done", False):
                return item, True
        return item, None
