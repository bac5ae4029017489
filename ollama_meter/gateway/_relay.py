"""Metered relay of one call: admit, wait for a slot, forward, observe items as they pass, write the span.

The reply is streamed to the client item by item as Ollama sends it. The last item (Ollama's
``done`` chunk, or the SSE ``[DONE]``) is held until the span is in the ledger: a client that
has its whole answer always has its span written.

A call waits for a slot on a server that has its model (``_slots.py``, the fair queue); it
moves to another such server, ahead of the queue, when its server fails it with a transient
failure, or says it lacks the model, before anything reached the client.

The route's wire format (``ollama_meter.upstream.OLLAMA`` or ``OPENAI``) says how items are
framed, how they read as the meter's events, and what an error looks like to the client. The
call goes through the pooled transport and the one retry and breaker policy: admitted once,
retried on transient failures while nothing has reached the client, counted once. Any
``error`` in what Ollama sends ends the call as an error. A stream that breaks ends with an
error item in the route's own format, so the official clients raise, as they do against Ollama
directly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.responses import Response

from ollama_meter.errors import (
    BudgetExceeded,
    CircuitOpen,
    KeyRefused,
    LedgerError,
    ModelNotFound,
    OverCap,
    ServerBusy,
    UpstreamError,
)
from ollama_meter.gateway._ahead import Pools, ReadAhead, Room
from ollama_meter.gateway._answers import (
    budget_retry,
    error_response,
    failure_response,
    key_refused_response,
    refusal_response,
    unchecked_response,
)
from ollama_meter.gateway._fleet import Fleet
from ollama_meter.gateway._onward import ask_upstream, close_asked, heard, upstream_headers
from ollama_meter.gateway._rates import Admission
from ollama_meter.gateway._requests import MeteredRequest
from ollama_meter.gateway._slots import (
    CallerGone,
    Hangup,
    Heard,
    Holding,
    LastPart,
    Slot,
    Streamed,
    take_slot,
    until_gone,
)
from ollama_meter.gateway._threads import close_call, in_thread
from ollama_meter.gateway._whole import Relayed, Whole, failure_of, json_value
from ollama_meter.meter import Attribution, Meter, MeteredCall, Opening
from ollama_meter.meter._request import with_output_cap
from ollama_meter.upstream import (
    END,
    CallAttempts,
    Frames,
    Malformed,
    PooledUpstream,
    Refusal,
    WireFormat,
    caller_of,
    is_transient,
    wire_of_path,
)
from ollama_meter.upstream._answer import VECTORS
from ollama_meter.upstream._classify import unfinished_error, unreadable
from ollama_meter.upstream._pooled import content_type_of, gateway_status
from ollama_meter.upstream._recorded import SPAN_HEADER

wire_of: Callable[[str], WireFormat] = wire_of_path
"""The wire format a route's clients speak: Anthropic's on ``/v1/messages``, OpenAI's
elsewhere under ``/v1/``, else Ollama's."""


@dataclass(frozen=True, slots=True)
class _Answered:
    """A call Ollama answered 200: what reading the answer needs, and how the call ends."""

    meter: Meter
    call: MeteredCall
    attempts: CallAttempts
    request: MeteredRequest
    wire: WireFormat
    response: aiohttp.ClientResponse
    pool: PooledUpstream
    served: Callable[[BaseException | None], None]  # as the call ended (``Fleet.answering``)

    async def end(self, outcome: BaseException | None = None) -> None:
        """The call's outcome counted once by the retry policy, and its span written."""
        self.attempts.end(outcome)
        self.served(outcome)
        await close_call(self.meter, self.call, outcome)

    async def whole(self, hangup: Hangup | None = None) -> Response:
        """The whole answer, its last byte after its span is written; an embedding batch larger than
        the gateway holds (:data:`MAX_ANSWER_BYTES`) is relayed as it arrives instead
        (:func:`~._whole.relayed`), its last bytes after its span is written."""
        call, wire, response, pool = self.call, self.wire, self.response, self.pool
        try:
            async with call.in_time(call.deadline()):
                if self.request.operation in VECTORS:  # may be larger than an answer held
                    content, complete = await pool.head(response)
                else:
                    content, complete = await pool.read(response), True
        except UpstreamError as error:
            pool.finish(response, completed=False)
            call.answered()  # lost on the way (or too large to take): the work was done
            await self.end(error)
            return error_response(wire, gateway_status(error), str(error))
        except BaseException as exc:  # the client hung up: Ollama is stopped, the span written
            pool.finish(response, completed=False)
            call.answered()
            await self.end(exc)
            raise
        media_type = content_type_of(response) or "application/json"
        if not complete:
            return Relayed(self, content, hangup, media_type=media_type)
        pool.finish(response, completed=True)
        failure = failure_of(self, json_value(content))
        if failure is not None:
            await self.end(failure)
            return error_response(wire, 502, str(failure))
        return Whole(self, content, hangup, media_type=media_type)  # its span written as it goes

    async def stream(
        self,
        hangup: Hangup | None = None,
        ahead: Room | None = None,
        all_read: Callable[[], None] = lambda: None,
    ) -> AsyncIterator[bytes]:
        """The answer as it is read (one part a read), the last after the span is written.
        The client gets the answer its span describes: nothing after the answer's end, and
        an item that is not one (a line that is not a JSON object) breaks the stream.

        Ollama's answer is read on ahead of a slow client within ``ahead``'s bounds, and
        ``all_read`` called once it has all been read (:class:`~._ahead.ReadAhead`)."""
        call, request, wire = self.call, self.request, self.wire
        response, pool = self.response, self.pool
        separator = wire.separator
        reader = wire.reader(request.operation, stream=True)
        closed = False
        heard = Heard(hangup)

        async def take(frame: bytes) -> tuple[bytes | None, bool]:
            """What of ``frame`` the client gets (None: nothing), and whether the stream stops."""
            nonlocal closed
            if closed or not frame.strip():  # after the answer's end nothing is the answer's
                return None, False
            try:
                item = wire.decode(frame)
            except Malformed as bad:
                raise unreadable(pool.host, str(bad)) from None
            if item is None:  # not an item (an SSE comment): relayed as is
                return frame + separator, False
            failure = call.take(reader.finish() if item is END else reader.read(item))
            if failure is not None or reader.complete:
                outcome = failure or await heard.ending()  # (nobody there to take it: an abort)
                closed = True
                await self.end(outcome)
            if isinstance(failure, OverCap) or (failure is not None and item is END):
                return wire.error_frame(str(failure)), True  # past the cap, or an early end
            if failure is not None:
                return frame + separator, True  # the client sees Ollama's own error item
            if isinstance(item, dict):  # less what the gateway asked for on the client's behalf
                shown = wire.shown(frame, item, hide_usage=request.hide_usage)
                return (None if shown is None else shown + separator), False
            return frame + separator, False

        frames = Frames(separator, host=pool.host)
        batches = ReadAhead(pool.items(response, frames), ahead, all_read)
        deadline = call.deadline()
        ready: list[bytes] = []  # the items of one read: one part, one write (not one each)
        try:
            ended = False
            while not ended:
                try:
                    async with call.in_time(deadline):  # a silent server runs out of time too
                        batch = await batches.next()
                except StopAsyncIteration:
                    batch, ended = frames.end(), True
                for frame in batch:
                    out, stop = await take(frame)
                    ready += () if out is None else (out,)
                    if stop or closed:  # the answer is over, whether or not its body is
                        if ready:  # the last part, with the body's end
                            yield LastPart(b"".join(ready))
                        return
                if ready:
                    part = b"".join(ready)
                    ready.clear()
                    yield part
                if heard.gone and not closed:  # what it was sent went nowhere
                    closed = True
                    await self.end(asyncio.CancelledError())
                    return
            if not closed:
                raise unfinished_error(pool.host)
        except UpstreamError as error:  # broke off, went silent, ended early, or unreadable
            if not closed:  # the read's items before the break go first, as they came
                closed = True
                call.answered()  # Ollama's 200 comes with its first item: it consumed
                await self.end(error)
                yield LastPart(b"".join(ready) + wire.error_frame(str(error)))
        except BaseException as exc:  # the client hung up (or the server is stopping)
            if not closed:
                closed = True
                await self.end(exc)
            raise
        finally:
            heard.close()
            batches.stop()
            # Read to the end: the connection goes back to the pool. Cut short (the
            # client hung up, the stream broke): it is dropped, which stops Ollama.
            pool.finish(response, completed=response.content.at_eof())
            # Closed here, not left to the event loop's finalizer: that is a thread-safe
            # wake-up and a task of its own, each streamed call (the reader stops at the
            # answer's end, before the body's).
            await batches.aclose()


class Relay:
    """Relays metered calls through ``meter`` to a server of ``fleet``, one slot per call."""

    def __init__(self, meter: Meter, fleet: Fleet, *, keyed: bool = False) -> None:
        self.meter = meter
        self.fleet = fleet
        self.keyed = keyed
        """Keys required: a caller is one department, told no other's spend (``narrow``)."""
        self.ahead = Pools()
        """Bytes of streamed answers read ahead of their callers (``_ahead``)."""

    async def metered(
        self,
        request: MeteredRequest,
        wire: WireFormat,
        raw_headers: Any,
        attribution: Attribution,
        query: str,
        admission: Admission | None = None,
        *,
        bind: Callable[[str], None] | None = None,
        hangup: Hangup | None = None,
        recheck: Callable[[], Awaitable[object]] | None = None,
    ) -> Response:
        """Meter one call: budgets, a slot on a server (waiting its turn), Ollama, the span.

        ``admission`` says how the call queues (its department, weight, concurrency limits);
        ``bind`` learns the span's id once it is open; ``hangup`` returns when the caller has
        gone: a call waiting its turn leaves the queue, an answer being sent stops;
        ``recheck`` raises :class:`KeyRefused` when a call that waited for its slot may no
        longer be sent (its key revoked meanwhile)."""
        admission = admission or Admission((attribution.tenant, attribution.department))
        try:
            call = await self._open(request, attribution)
        except BudgetExceeded as refused:
            admission.refund()
            wait = {"Retry-After": str(refused.retry_after), SPAN_HEADER: str(refused.span_id)}
            told = refused.narrow if self.keyed else str(refused)
            wait |= budget_retry(refused.retry_after)
            return error_response(wire, 429, told, headers=wait, kind=refused.error_type)
        except LedgerError as unchecked:  # a covering budget unchecked, or nothing can record
            admission.refund()
            return unchecked_response(wire, unchecked)
        if bind is not None:
            bind(call.span.id)
        content = request.upstream_body
        if call.output_cap is not None:  # a hard budget admitted the call on this reply cap
            capped = with_output_cap(request.operation, request.body, call.output_cap)
            content = json.dumps(capped).encode()
        queued = time.monotonic_ns()
        try:
            slot = await take_slot(
                self.fleet, self.meter, call, request.model, admission, hangup, recheck
            )
        except KeyRefused as refused:  # as the door refuses it: never sent
            admission.refund()
            call.span.queue_ns = (call.span.queue_ns or 0) + time.monotonic_ns() - queued
            await close_call(self.meter, call, refused)
            return key_refused_response(wire, refused)
        except CallerGone:
            call.span.queue_ns = (call.span.queue_ns or 0) + time.monotonic_ns() - queued
            await close_call(self.meter, call, asyncio.CancelledError())
            return Response(status_code=499)  # nobody is there to read it
        except ServerBusy as busy:
            admission.refund()
            call.span.queue_ns = (call.span.queue_ns or 0) + time.monotonic_ns() - queued
            await close_call(self.meter, call, busy)
            return error_response(
                wire, 503, str(busy), headers={"Retry-After": str(busy.retry_after)}
            )
        except BaseException as exc:  # the server is stopping while the call waits
            call.span.queue_ns = (call.span.queue_ns or 0) + time.monotonic_ns() - queued
            await close_call(self.meter, call, exc)
            raise
        headers = upstream_headers(call, attribution, raw_headers)
        try:
            # Until the answer starts, only listening tells that the caller left.
            sent = await until_gone(
                self._send(call, slot, request, wire, content, headers, query, admission, bind),
                hangup,
            )
            if isinstance(sent, Response):
                return sent
            if not request.stream:
                whole = await until_gone(sent.whole(hangup), hangup)
                # An answer relayed as it arrives gives the slot back when it has been sent.
                return Holding(whole, slot.hand_over()) if isinstance(whole, Relayed) else whole
            # The slot goes back when Ollama's answer has ended, read on ahead of a slow client
            # as its flow's (``_ahead``), or else once it has been sent, however it ends.
            lease, room = slot.hand_over(), self.ahead.room(admission.flow, admission.weight)
            stream = Streamed(
                sent.stream(hangup, room, lease.release),
                media_type=wire.stream_media_type
                or content_type_of(sent.response)
                or "application/x-ndjson",
                headers={"cache-control": "no-cache"} if wire.stream_media_type else None,
            )
            return Holding(stream, lease)
        except CallerGone:
            return Response(status_code=499)  # nobody is there to read it
        finally:
            slot.release()

    async def _send(
        self,
        call: MeteredCall,
        slot: Slot,
        request: MeteredRequest,
        wire: WireFormat,
        content: bytes,
        headers: dict[str, str],
        query: str,
        admission: Admission,
        bind: Callable[[str], None] | None = None,
    ) -> _Answered | Response:
        """Ollama's 200 response, or the answer for the client (the span is then closed).

        On a server another one could stand in for, a transient failure (unreachable, silent,
        5xx, 429) or "model not found" moves the call there, ahead of the queue; on the last one
        the one retry policy retries it. A server that did not answer at all is taken out of the
        routing until discovery sees it answer.
        """
        fleet, model = self.fleet, request.model
        who = caller_of(*admission.flow)  # its own circuits: routing and breakers ask of them
        tried: set[str] = set()
        reached = False  # a server was called: the call counts in its rates
        soonest: tuple[float, str, CircuitOpen] | None = None  # the circuit to open first
        while True:  # one server, then the next
            assert slot.lease is not None
            server = slot.lease.server
            call.span.upstream_host = server.url
            heard(self.meter, call, None)  # nothing said of this attempt's record yet
            elsewhere = fleet.can_move(model, {*tried, server.url}, who)
            began = time.perf_counter_ns()
            try:
                attempts = slot.lease.attempts(model, elsewhere=elsewhere, waits=call, caller=who)
                async with call.in_time(call.deadline()):  # a whole answer comes at its end
                    sent = await server.pool.send(
                        attempts, request.path, body=content, query=query, headers=headers
                    )
            except UpstreamError as error:  # its circuit is open, or no answer came
                failure = error
            except BaseException as exc:  # cancelled while waiting on Ollama: still one span
                await close_asked(self.meter, fleet, call, exc)
                raise
            else:
                said = sent.named if isinstance(sent, Refusal) else sent.headers
                if (recorded := heard(self.meter, call, said)) and bind is not None:
                    bind(recorded)  # a gateway behind this one recorded it here: its span
                if not isinstance(sent, Refusal):
                    served = fleet.answering(server, model)
                    return _Answered(
                        self.meter, call, attempts, request, wire, sent, server.pool, served
                    )
                missing = isinstance(sent.error, ModelNotFound)
                if missing:  # removed since discovery (or never there): not routed here again
                    fleet.lacks(server, model)
                if not (elsewhere and (missing or is_transient(sent.error))):
                    await close_call(self.meter, call, sent.error)
                    return refusal_response(wire, sent)
                failure = sent.error
            tried.add(server.url)
            reached = reached or not isinstance(failure, CircuitOpen)
            if isinstance(failure, CircuitOpen):
                turned = (failure.retry_after or 0.0, server.url, failure)
                soonest = turned if soonest is None or turned[0] < soonest[0] else soonest
            if failure.error_type == "connection":
                fleet.took_out(server, str(failure))
            if isinstance(failure, OverCap) or not fleet.can_move(model, tried, who):
                if not reached and soonest is not None:  # every circuit open: turned away
                    admission.refund()  # here, as by a full queue; back when the first lets it
                    _, call.span.upstream_host, failure = soonest
                call.span.http_status = failure.status_code or gateway_status(failure)  # 502, 504
                await close_asked(self.meter, fleet, call, failure)
                return failure_response(wire, failure)
            call.moved(time.perf_counter_ns() - began)  # not the next server's busy time
            moving = time.monotonic_ns()
            try:
                # Its server's slot is given back; its places under its limits stay its own.
                lease = await slot.move(fleet.move(slot.lease, model, tried, who))
            except BaseException as exc:  # busy, its key revoked, the caller left, or stopping
                call.span.queue_ns = (call.span.queue_ns or 0) + time.monotonic_ns() - moving
                await close_call(self.meter, call, exc)
                if isinstance(exc, ServerBusy):
                    return failure_response(wire, exc)
                if isinstance(exc, KeyRefused):
                    return key_refused_response(wire, exc)
                raise
            call.span.queue_ns = (call.span.queue_ns or 0) + lease.waited_ns  # both waits

    async def _open(self, request: MeteredRequest, attribution: Attribution) -> MeteredCall:
        """Admit and open the call: in place when memory can decide, else on a ledger thread."""
        facts, stream = request.facts, request.stream
        opening = Opening(request.operation, request.model, stream, attribution, facts, queued=True)
        await ask_upstream(self.meter, self.fleet, attribution)  # a gateway behind it? (budgets)
        call = self.meter.try_open(opening)
        if call is not None:
            return call

        opened: list[MeteredCall] = []

        def open_call() -> MeteredCall:
            new = self.meter.open(opening)
            opened.append(new)
            return new

        try:
            made: MeteredCall = await in_thread(open_call)
        except BaseException as exc:  # cancelled as it opened (the server stopping): one span
            if opened:
                await close_call(self.meter, opened[0], exc)
            raise
        return made
