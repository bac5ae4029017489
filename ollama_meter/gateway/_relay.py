"""Metered relay of one call: admit, forward, observe chunks as they pass, write the span.

The reply is streamed to the client line by line as Ollama sends it. The last
line (Ollama's ``done`` chunk, or the SSE ``[DONE]``) is held until the span is
in the ledger: a client that has its whole answer always has its span written.

A call goes through the same retry and breaker policy as the CLI's
(:class:`~ollama_meter.upstream.CallAttempts`): admitted once, retried on
transient failures while nothing has reached the client, counted once. Any
``error`` in what Ollama sends ends the call as an error. A stream that breaks
ends with an error line in the route's own format (an NDJSON ``{"error": ...}``
line, or an SSE error event), so the official clients raise, as they do
against Ollama directly.
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
from ollama_meter.gateway._requests import MeteredRequest
from ollama_meter.gateway._threads import in_thread
from ollama_meter.gateway._upstream import UpstreamPool, finish, gateway_status
from ollama_meter.meter import Attribution, Meter, MeteredCall
from ollama_meter.meter._request import facts_of, with_output_cap
from ollama_meter.upstream import CallAttempts, classify, error_text

HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate", "authorization",
    "x-ometer-key", "x-ometer-tenant", "x-ometer-department", "x-ometer-user",
})  # fmt: skip


def error_body(openai: bool, status: int, message: str) -> dict[str, Any]:
    """Ollama's ``{"error": "..."}``, or OpenAI's error object on ``/v1``."""
    if openai:
        kind = "invalid_request_error" if status < 500 else "api_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def error_response(
    openai: bool, status: int, message: str, *, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(error_body(openai, status, message), status_code=status, headers=headers)


def error_line(openai: bool, message: str) -> bytes:
    """The last line of a stream that broke: what Ollama itself would send."""
    body = json.dumps(error_body(openai, 500, message), ensure_ascii=False).encode()
    return b"data: " + body + b"\n\n" if openai else body + b"\n"


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


def _reported_error(obj: dict[str, Any]) -> UpstreamError | None:
    """The error an object from Ollama reports, if any: one rule for the CLI and the gateway."""
    if obj.get("error") is None and obj.get("done_reason") != "error":
        return None
    detail = error_text(obj.get("error") or "the answer ended with done_reason 'error'")
    return classify(ollama.ResponseError(detail, -1), host="", model="", started=True)


class _OpenAIReply:
    """Feeds OpenAI-shaped objects to a call: text, the model, the finish reason, usage."""

    def __init__(self, call: MeteredCall, operation: str) -> None:
        self.call = call
        self.operation = operation
        self.model: str | None = None
        self.finish: str | None = None
        self.usage_seen = False

    def observe(self, obj: dict[str, Any]) -> bool:
        """Take one object; True when it carried the usage."""
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if text is not None else choice.get("text")
            if text and isinstance(text, str):
                self.call.observe(
                    ollama.ChatResponse(message={"role": "assistant", "content": text}, done=False)
                )
            if isinstance(choice.get("finish_reason"), str):
                self.finish = choice["finish_reason"]
        usage = obj.get("usage")
        if not isinstance(usage, dict) or not usage:
            return False
        self.usage_seen = True
        embeddings = self.operation == "openai.embeddings"
        self._final(
            _count(usage.get("prompt_tokens")),
            0 if embeddings else _count(usage.get("completion_tokens")),
        )
        return True

    def end(self) -> None:
        """No usage came: keep the model and finish reason; the meter estimates the counts."""
        if not self.usage_seen:
            self._final(None, None)

    def _final(self, prompt_tokens: int | None, output_tokens: int | None) -> None:
        self.call.observe(
            ollama.ChatResponse(
                model=self.model,
                message={"role": "assistant", "content": ""},
                done=True,
                done_reason=self.finish,
                prompt_eval_count=prompt_tokens,
                eval_count=output_tokens,
            )
        )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Relay:
    """One gateway, one upstream: relays metered calls through ``meter``."""

    def __init__(self, meter: Meter, pool: UpstreamPool) -> None:
        self.meter = meter
        self.pool = pool
        self.upstream = pool.base_url

    async def metered(
        self, request: MeteredRequest, raw_headers: Any, attribution: Attribution, query: str
    ) -> Response:
        openai = request.openai

        def open_call() -> MeteredCall:
            return self.meter.open(
                operation=request.operation,
                model=request.model,
                stream=request.stream,
                attribution=attribution,
                facts=facts_of(request.operation, request.body),
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
        content = request.upstream_body
        if call.output_cap is not None:  # a hard budget admitted the call on this reply cap
            capped = with_output_cap(request.operation, request.body, call.output_cap)
            content = json.dumps(capped).encode()
        try:
            attempts = self.meter.upstream.attempts(request.model)
        except CircuitOpen as exc:
            await in_thread(self.meter.close, call, exc)
            wait = str(max(1, int(exc.retry_after)))
            return error_response(openai, 503, str(exc), headers={"Retry-After": wait})
        try:
            sent = await self._send(call, attempts, request, content, raw_headers, query)
        except BaseException as exc:  # cancelled while waiting on Ollama: still one span
            attempts.end(exc)
            await in_thread(self.meter.close, call, exc)
            raise
        if isinstance(sent, Response):
            return sent
        if not request.stream:
            return await self._whole(call, attempts, request, sent)
        media = (
            "text/event-stream"
            if openai
            else sent.headers.get("content-type", "application/x-ndjson")
        )
        return StreamingResponse(
            self._stream(call, attempts, request, sent),
            media_type=media,
            headers={"cache-control": "no-cache"} if openai else None,
        )

    async def _send(
        self,
        call: MeteredCall,
        attempts: CallAttempts,
        request: MeteredRequest,
        content: bytes,
        raw_headers: Any,
        query: str,
    ) -> aiohttp.ClientResponse | Response:
        """Ollama's 200 response, or the error answer for the client (the span is then closed).

        Transient failures (unreachable, silent, 5xx, 429) are retried with the meter's
        backoff while nothing has reached the client, streamed or not; a 4xx never is.
        """
        headers = {**forward_headers(raw_headers), "content-type": "application/json"}
        while True:
            try:
                response = await self.pool.request(
                    "POST", request.path, body=content, query=query, headers=headers
                )
            except UpstreamError as error:  # unreachable (502) or silent (504)
                wait = attempts.retry_in(error)
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
                await in_thread(self.meter.close, call, error)
                return error_response(request.openai, gateway_status(error), str(error))
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
                model=request.model,
                started=False,
            )
            wait = attempts.retry_in(failure)
            if wait is not None:
                await asyncio.sleep(wait)
                continue
            await in_thread(self.meter.close, call, failure)
            return Response(
                answer, status_code=response.status, media_type=response.headers.get("content-type")
            )

    async def _whole(
        self,
        call: MeteredCall,
        attempts: CallAttempts,
        request: MeteredRequest,
        response: aiohttp.ClientResponse,
    ) -> Response:
        try:
            content = await self.pool.read(response)
        except UpstreamError as error:
            finish(response, completed=False)
            attempts.end(error)
            await in_thread(self.meter.close, call, error)
            return error_response(request.openai, 502, str(error))
        finish(response, completed=True)
        try:
            obj = json.loads(content)
        except (ValueError, RecursionError):
            obj = {}
        obj = obj if isinstance(obj, dict) else {}
        failure = _reported_error(obj)
        if failure is not None:
            attempts.end(failure)
            await in_thread(self.meter.close, call, failure)
            return error_response(request.openai, 502, str(failure))
        if request.openai:
            reply = _OpenAIReply(call, request.operation)
            reply.observe(obj)
            reply.end()
        elif (part := _ollama_part(request.operation, obj)) is not None:
            call.observe(part)
        else:
            # legacy /api/embeddings reports no counts: the meter estimates them
            model = obj.get("model")
            call.observe(
                ollama.EmbedResponse(model=model if isinstance(model, str) else None, embeddings=[])
            )
        attempts.end()
        await in_thread(self.meter.close, call)
        return Response(
            content,
            status_code=200,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def _stream(
        self,
        call: MeteredCall,
        attempts: CallAttempts,
        request: MeteredRequest,
        response: aiohttp.ClientResponse,
    ) -> AsyncIterator[bytes]:
        closed = False

        async def close(outcome: BaseException | None = None) -> None:
            nonlocal closed
            closed = True
            attempts.end(outcome)
            await in_thread(self.meter.close, call, outcome)

        openai = request.openai
        reply = _OpenAIReply(call, request.operation) if openai else None
        separator = b"\n\n" if openai else b"\n"
        try:
            buffer = b""
            async for data in self.pool.chunks(response):
                buffer += data
                while separator in buffer:
                    item, buffer = buffer.split(separator, 1)
                    if not item.strip():
                        continue
                    if closed:  # after the end: relayed as is
                        yield item + separator
                        continue
                    out, ending = self._observe_item(call, request, reply, item)
                    if isinstance(ending, UpstreamError):
                        await close(ending)
                        if out is not None:
                            yield out + separator  # the client sees Ollama's own error line
                        return
                    if ending:
                        await close()
                    if out is not None:
                        yield out + separator
            if not closed:
                raise StreamError(
                    f"the stream from Ollama at {self.upstream} ended without its final chunk"
                )
        except UpstreamError as error:  # broke off, went silent, or ended early
            if not closed:
                await close(error)
                yield error_line(openai, str(error))
        except BaseException as exc:  # the client hung up (or the server is stopping)
            if not closed:
                await close(exc)
            raise
        finally:
            # Read to the end: the connection goes back to the pool. Cut short (the
            # client hung up, the stream broke): it is dropped, which stops Ollama.
            finish(response, completed=response.content.at_eof())

    def _observe_item(
        self, call: MeteredCall, request: MeteredRequest, reply: _OpenAIReply | None, item: bytes
    ) -> tuple[bytes | None, bool | UpstreamError]:
        """What to send on for one line/event, and whether (and how) it ends the call."""
        if reply is not None:
            text = item.decode(errors="replace").strip()
            if not text.startswith("data:"):
                return item, False
            payload = text[5:].strip()
            if payload == "[DONE]":
                reply.end()
                return item, True
            obj = _json_object(payload)
            if obj is None:
                return item, False
            failure = _reported_error(obj)
            if failure is not None:
                return item, failure
            carried_usage = reply.observe(obj)
            if carried_usage and request.hide_usage and not obj.get("choices"):
                return None, False
            return item, False
        obj = _json_object(item)
        if obj is None:
            return item, False
        failure = _reported_error(obj)
        if failure is not None:
            return item, failure
        part = _ollama_part(request.operation, obj)
        if part is not None:
            call.observe(part)
            if getattr(part, "done", False):
                return item, True
        return item, False


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
