"""Metered relay of one call: admit, forward, observe items as they pass, write the span.

The reply is streamed to the client item by item as Ollama sends it. The last
item (Ollama's ``done`` chunk, or the SSE ``[DONE]``) is held until the span is
in the ledger: a client that has its whole answer always has its span written.

The route's wire format (``ollama_meter.upstream.OLLAMA`` or ``OPENAI``) says how
items are framed, how they read as the meter's events, and what an error looks
like to the client. The call goes through the pooled transport and the one
retry and breaker policy: admitted once, retried on transient failures while
nothing has reached the client, counted once. Any ``error`` in what Ollama
sends ends the call as an error. A stream that breaks ends with an error item
in the route's own format, so the official clients raise, as they do against
Ollama directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from ollama_meter.errors import BudgetExceeded, CircuitOpen, LedgerError, UpstreamError
from ollama_meter.gateway._requests import MeteredRequest
from ollama_meter.gateway._threads import in_thread
from ollama_meter.meter import Attribution, Meter, MeteredCall
from ollama_meter.meter._request import facts_of, with_output_cap
from ollama_meter.upstream import END, CallAttempts, Frames, PooledUpstream, Refusal, WireFormat
from ollama_meter.upstream._classify import unfinished_error
from ollama_meter.upstream._pooled import gateway_status

HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate", "authorization",
    "x-ometer-key", "x-ometer-tenant", "x-ometer-department", "x-ometer-user",
})  # fmt: skip


def error_response(
    wire: WireFormat, status: int, message: str, *, headers: dict[str, str] | None = None
) -> Response:
    """An error in the route's wire format: Ollama's ``{"error": "..."}``, or OpenAI's object."""
    return JSONResponse(wire.error_body(status, message), status_code=status, headers=headers)


def forward_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(content)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


class Relay:
    """One gateway, one upstream: relays metered calls through ``meter``."""

    def __init__(self, meter: Meter, pool: PooledUpstream) -> None:
        self.meter = meter
        self.pool = pool

    async def metered(
        self,
        request: MeteredRequest,
        wire: WireFormat,
        raw_headers: Any,
        attribution: Attribution,
        query: str,
    ) -> Response:
        try:
            call = await self._open(request, attribution)
        except BudgetExceeded as refused:
            return error_response(
                wire, 429, str(refused), headers={"Retry-After": str(refused.retry_after)}
            )
        except LedgerError as unchecked:  # a covering budget unchecked, or nothing can record
            return error_response(wire, 503, str(unchecked), headers={"Retry-After": "5"})
        content = request.upstream_body
        if call.output_cap is not None:  # a hard budget admitted the call on this reply cap
            capped = with_output_cap(request.operation, request.body, call.output_cap)
            content = json.dumps(capped).encode()
        try:
            attempts = self.pool.attempts(request.model)
        except CircuitOpen as exc:
            await in_thread(self.meter.close, call, exc)
            wait = str(max(1, int(exc.retry_after)))
            return error_response(wire, 503, str(exc), headers={"Retry-After": wait})
        headers = {**forward_headers(raw_headers), "content-type": "application/json"}
        try:
            sent = await self.pool.send(
                attempts, request.path, body=content, query=query, headers=headers
            )
        except UpstreamError as error:  # unreachable (502) or silent (504), after the retries
            await in_thread(self.meter.close, call, error)
            return error_response(wire, gateway_status(error), str(error))
        except BaseException as exc:  # cancelled while waiting on Ollama: still one span
            await in_thread(self.meter.close, call, exc)
            raise
        if isinstance(sent, Refusal):  # Ollama's own answer goes to the client as it came
            await in_thread(self.meter.close, call, sent.error)
            return Response(
                sent.body,
                status_code=sent.status,
                media_type=sent.content_type,
                headers={"Retry-After": sent.retry_after} if sent.retry_after else None,
            )
        if not request.stream:
            return await self._whole(call, attempts, request, wire, sent)
        return StreamingResponse(
            self._stream(call, attempts, request, wire, sent),
            media_type=wire.stream_media_type
            or sent.headers.get("content-type", "application/x-ndjson"),
            headers={"cache-control": "no-cache"} if wire.stream_media_type else None,
        )

    async def _open(self, request: MeteredRequest, attribution: Attribution) -> MeteredCall:
        """Admit and open the call: in place when memory can decide, else on a ledger thread."""
        facts = facts_of(request.operation, request.body)
        call = self.meter.try_open(
            operation=request.operation,
            model=request.model,
            stream=request.stream,
            attribution=attribution,
            facts=facts,
        )
        if call is not None:
            return call

        def open_call() -> MeteredCall:
            return self.meter.open(
                operation=request.operation,
                model=request.model,
                stream=request.stream,
                attribution=attribution,
                facts=facts,
            )

        opened: MeteredCall = await in_thread(open_call)
        return opened

    async def _whole(
        self,
        call: MeteredCall,
        attempts: CallAttempts,
        request: MeteredRequest,
        wire: WireFormat,
        response: aiohttp.ClientResponse,
    ) -> Response:
        try:
            content = await self.pool.read(response)
        except UpstreamError as error:
            self.pool.finish(response, completed=False)
            attempts.end(error)
            await in_thread(self.meter.close, call, error)
            return error_response(wire, 502, str(error))
        self.pool.finish(response, completed=True)
        reader = wire.reader(request.operation)
        failure = call.take([*reader.read(_json_object(content)), *reader.finish()])
        attempts.end(failure)
        await in_thread(self.meter.close, call, failure)
        if failure is not None:
            return error_response(wire, 502, str(failure))
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
        wire: WireFormat,
        response: aiohttp.ClientResponse,
    ) -> AsyncIterator[bytes]:
        closed = False

        async def close(outcome: BaseException | None = None) -> None:
            nonlocal closed
            closed = True
            attempts.end(outcome)
            await in_thread(self.meter.close, call, outcome)

        reader = wire.reader(request.operation)
        separator = wire.separator
        frames = Frames(separator, host=self.pool.host)
        try:
            async for data in self.pool.chunks(response):
                for frame in frames.feed(data):
                    if not frame.strip():
                        continue
                    item = None if closed else wire.decode(frame)
                    if item is None:  # after the end, or not an object: relayed as is
                        yield frame + separator
                        continue
                    failure = call.take(reader.finish() if item is END else reader.read(item))
                    if failure is not None:
                        await close(failure)
                        yield frame + separator  # the client sees Ollama's own error item
                        return
                    if reader.complete:
                        await close()
                    if isinstance(item, dict) and wire.hidden(item, hide_usage=request.hide_usage):
                        continue
                    yield frame + separator
            if not closed:
                raise unfinished_error(self.pool.host)
        except UpstreamError as error:  # broke off, went silent, or ended early
            if not closed:
                await close(error)
                yield wire.error_frame(str(error))
        except BaseException as exc:  # the client hung up (or the server is stopping)
            if not closed:
                await close(exc)
            raise
        finally:
            # Read to the end: the connection goes back to the pool. Cut short (the
            # client hung up, the stream broke): it is dropped, which stops Ollama.
            self.pool.finish(response, completed=response.content.at_eof())
