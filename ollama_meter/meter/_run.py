"""The sync and async drivers of a metered call through the ``ollama`` client (CLI, Python API).

A :class:`Run` opens the call, hands each answer object to the meter through the
Ollama-native adapter, and closes the call; the objects themselves go on to the
caller as the client returned them. The gateway drives its calls itself (it
relays bytes), through the same meter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from ollama_meter._names import NO_DEPARTMENT, NO_TENANT
from ollama_meter._urls import shown as shown_url
from ollama_meter.errors import UpstreamError
from ollama_meter.meter._attribution import Attribution
from ollama_meter.meter._call import MeteredCall
from ollama_meter.meter._elsewhere import streamed_from_gateway
from ollama_meter.meter._ending import close_at_exit, stopped
from ollama_meter.meter._request import Opening, facts_of, with_output_cap
from ollama_meter.records import SpanRecord
from ollama_meter.upstream import OLLAMA
from ollama_meter.upstream._recorded import Heard, who_headers

if TYPE_CHECKING:
    from ollama_meter.meter._meter import Meter

_T = TypeVar("_T")


@runtime_checkable
class Answers(Protocol):
    """A transport that returns answer objects: the ``ollama`` client transport."""

    host: str

    def sent(self, operation: str, request: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def call(
        self,
        operation: str,
        request: Mapping[str, Any],
        time_cap: MeteredCall | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Any: ...

    def stream(
        self,
        operation: str,
        request: Mapping[str, Any],
        time_cap: MeteredCall | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Generator[Any, None, None]: ...

    async def acall(
        self,
        operation: str,
        request: Mapping[str, Any],
        waits: MeteredCall | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Any: ...

    def astream(
        self,
        operation: str,
        request: Mapping[str, Any],
        waits: MeteredCall | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> AsyncGenerator[Any, None]: ...


class Run:
    """An iterable metered call: Ollama's chunks (or its one answer), then ``span`` is final.

    The last chunk is handed over only after the span is written, so whoever
    receives it can read the call's cost and ids.
    """

    def __init__(
        self,
        meter: Meter,
        operation: str,
        request: Mapping[str, Any],
        attribution: Attribution,
        stream: bool,
    ) -> None:
        if not isinstance(meter.upstream, Answers):
            raise TypeError(
                f"{type(meter.upstream).__name__} relays bytes; a Run needs the ollama client "
                "transport (Meter.from_settings with source 'cli' or 'sdk')"
            )
        self._meter = meter
        self._upstream: Answers = meter.upstream
        self.operation = operation
        self.request = request
        self.attribution = attribution
        self.stream = stream
        self.call: MeteredCall | None = None

    @property
    def recorded_by(self) -> str | None:
        """The gateway that recorded the call in this meter's ledger (its address): its span
        is the call's record (:attr:`span` has its id); None when this meter wrote the span."""
        call = self.call
        relied_on = call is not None and call.heard is not None and call.heard.relied_on
        return shown_url(self._upstream.host) if relied_on else None

    @property
    def span(self) -> SpanRecord:
        if self.call is None:
            raise RuntimeError("the call has not run yet; iterate it first")
        return self.call.span

    def open(self) -> MeteredCall:
        # Read as the client sends it: bytes as text, models and functions as JSON.
        sent = self._upstream.sent(self.operation, self.request)
        model = sent.get("model")
        self.call = call = self._meter.open(
            Opening(
                self.operation,
                model if isinstance(model, str) else str(model or ""),
                self.stream,
                self.attribution,
                facts_of(self.operation, sent),
            )
        )
        close_at_exit(self._meter, call)
        # Named to a gateway in front of Ollama, which charges by them; no name given (the
        # fallbacks): the gateway's own defaults (``ometer run``'s department, say) are kept.
        who = self.attribution
        tenant = None if who.tenant == NO_TENANT else who.tenant
        department = None if who.department == NO_DEPARTMENT else who.department
        # The span's tags: the call's, and what an on_start hook added (stored with the call).
        call.heard = Heard(
            sends=who_headers(
                tenant, department, who.user, call.span.tags, call.span.id, call.span.traced
            )
        )
        if call.output_cap is not None:
            self.request = with_output_cap(self.operation, self.request, call.output_cap)
        return call

    def __iter__(self) -> Generator[Any, None, None]:
        meter = self._meter
        call = self.open()
        reader = OLLAMA.reader(self.operation)
        last: Any = None
        try:
            if self.stream:
                parts = self._upstream.stream(
                    self.operation, self.request, call, caller=call.caller, heard=call.heard
                )
                try:
                    for part in parts:
                        failure = call.take(reader.read(part))
                        if failure is not None:
                            parts.throw(failure)  # the transport counts it, and raises it back
                        if last is None:
                            streamed_from_gateway(meter, call)
                        if last is not None:
                            yield last
                            call.read_here()  # not in a child forked meanwhile
                        last = part
                except UpstreamError:
                    if last is not None:  # read ahead and charged: handed over before the failure
                        held, last = last, None
                        yield held
                    raise
            else:
                last = self._upstream.call(
                    self.operation, self.request, call, caller=call.caller, heard=call.heard
                )
                call.take(reader.read(last))  # a reported failure was raised by the call
        except BaseException as exc:
            stopped(call, exc)
            meter.close(call, exc)
            raise
        meter.close(call)
        if last is not None:
            yield last

    async def __aiter__(self) -> AsyncGenerator[Any, None]:
        meter = self._meter
        call, cancelled = await _to_the_end(self.open)
        if cancelled is not None:  # the call is open (admitted, journaled): it ends as an abort
            await _to_the_end(meter.close, call, cancelled)
            raise cancelled
        reader = OLLAMA.reader(self.operation)
        last: Any = None
        parts: AsyncGenerator[Any, None] | None = None
        try:
            # A silent server, or a whole answer, is cut on time too: at the deadline of the
            # moment, which a wait between attempts pushed back (it is not Ollama's time).
            if self.stream:
                parts = self._upstream.astream(
                    self.operation, self.request, call, caller=call.caller, heard=call.heard
                )
                try:
                    while True:
                        async with call.in_time(call.deadline()):
                            part = await anext(parts, None)
                        if part is None:
                            break
                        failure = call.take(reader.read(part))
                        if failure is not None:
                            await parts.athrow(failure)
                        if last is None and call.heard is not None and call.heard.ledger:
                            await asyncio.to_thread(streamed_from_gateway, meter, call)
                        if last is not None:
                            yield last
                            call.read_here()
                        last = part
                except UpstreamError:
                    if last is not None:
                        held, last = last, None
                        yield held
                    raise
            else:
                async with call.in_time(call.deadline()):
                    last = await self._upstream.acall(
                        self.operation, self.request, call, caller=call.caller, heard=call.heard
                    )
                call.take(reader.read(last))
        except BaseException as exc:
            try:
                if parts is not None:  # stopped here (left at a chunk): Ollama's stream first
                    await parts.aclose()
            finally:
                stopped(call, exc)
                await asyncio.to_thread(meter.close, call, exc)
            raise
        await asyncio.to_thread(meter.close, call)
        if last is not None:
            yield last


async def _to_the_end(
    work: Callable[..., _T], *args: Any
) -> tuple[_T, asyncio.CancelledError | None]:
    """``work(*args)`` in a thread, waited for even when the task is cancelled meanwhile.

    A cancellation cannot stop the thread, only stop waiting for it: what the work did
    (a call opened, a budget reserved) would be left for no one to undo. So it is
    waited for, and the cancellation handed back to be raised once that is undone.
    """
    running = asyncio.ensure_future(asyncio.to_thread(_exits_kept, work, *args))
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            done, exiting = await asyncio.shield(running)
        except asyncio.CancelledError as exc:
            if running.cancelled():
                raise
            cancelled = exc
            continue
        if exiting is not None:
            raise exiting
        return done, cancelled


def _exits_kept(
    work: Callable[..., _T], *args: Any
) -> tuple[_T, KeyboardInterrupt | SystemExit | None]:
    """``work(*args)``, or the Ctrl-C or ``sys.exit()`` (a hook's) that stopped it, handed
    back: raised by the task that runs it, asyncio raises it out of the loop from there, the
    caller's task is cancelled, and its exit, never taken, is logged with its traceback."""
    try:
        return work(*args), None
    except (KeyboardInterrupt, SystemExit) as exc:
        return cast("_T", None), exc
