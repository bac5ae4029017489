"""One call in flight: what the upstream answered, measured into the call's span.

A :class:`MeteredCall` takes the meter's vocabulary only (``Delta`` and
``Final``, see ``ollama_meter.upstream``); each wire format has its adapter, so
nothing here knows Ollama's JSON, OpenAI's or a client library's types.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from ollama_meter.errors import ClientClosed, OverCap, UpstreamError, ValidationError
from ollama_meter.meter._honest import UTF8_MOST, within_latency
from ollama_meter.meter._passes import charge_unreported_pass
from ollama_meter.meter._usage import count_tokens, estimate_tokens, tokens_in_chars
from ollama_meter.meter._written import bytes_of
from ollama_meter.records import DurationSource, SpanRecord, Stored
from ollama_meter.upstream import Delta, Event, Final, caller_of

if TYPE_CHECKING:
    from ollama_meter.budgets import CallBound, Reservation
    from ollama_meter.pricing import PriceBook
    from ollama_meter.upstream._recorded import Heard


log = logging.getLogger("ollama_meter.meter")
_NO_LIMIT: contextlib.nullcontext[None] = contextlib.nullcontext()
CALLER_STOPPED = (
    GeneratorExit,
    KeyboardInterrupt,
    SystemExit,
    asyncio.CancelledError,
    ClientClosed,
)
"""What ends a call because its caller stopped it (left, Ctrl-C, closed its client): an abort."""


KEPT_REPLY_CHARS = 1_000_000
"""The most of a reply's text a call keeps (captured content; a whole reply Ollama did not
count): more than any model's context holds, so a server that streams for ever fills no
memory and no ledger row. Past it the reply says how much more there was."""
KEPT_CALL_PIECES = 1024
"""The most pieces of a reply's tool calls a call keeps (captured content), and characters
:data:`KEPT_REPLY_CHARS` (with the piece reaching it; 1,024 64 MiB frames were held): an
export holds far fewer (:mod:`~ollama_meter.telemetry._content`)."""


class MeteredCall:
    """Collects what the upstream sends; becomes a span when the meter closes it."""

    def __init__(
        self,
        span: SpanRecord,
        prompt_text: str,
        prices: PriceBook,
        *,
        keep_reply: bool = True,
        keep_calls: bool = False,
        evaluates: bool | None = None,
        input_estimate: int | None = None,
        pictures: int = 0,
    ) -> None:
        self.span = span
        self.pictures = pictures
        """The pictures the request carries (each bounds its prompt by what it may count)."""
        self.prompt_text = prompt_text
        self.input_estimate = (
            estimate_tokens(prompt_text) if input_estimate is None else input_estimate
        )
        """The prompt's tokens when Ollama does not count them; the meter gives
        ``RequestFacts.input_estimate`` (its tools and earlier tool calls, not only its texts)."""
        self.evaluates = bool(prompt_text.strip()) if evaluates is None else evaluates
        """Ollama evaluates something for the request (a prompt, messages, input to embed);
        False: it only loads or unloads the model (see ``RequestFacts.evaluates``)."""
        self.prices = prices
        """The rules in force when the call was admitted: its budget bound and its cost both
        come from them, so a rule changed while the call is in flight is not half applied."""
        self.keep_reply = keep_reply
        """Whether the reply's text is kept: a stream's output is estimated from its count of
        pieces, so unless content is captured its text would only fill memory (for ever, on
        a model that generates for ever)."""
        self.calls: list[object] | None = [] if keep_calls else None
        """The reply's tool calls as the wire gave them (:func:`~..upstream.tool_calls`
        reads them), where content is captured; at most :data:`KEPT_CALL_PIECES` pieces."""
        self.calls_chars = 0
        self.reply_parts: list[str] = []
        self.reply_chars = 0
        """The reply's length in characters, kept or not (see :data:`KEPT_REPLY_CHARS`)."""
        self.content_chunks = 0
        """The pieces of reply a stream carried (text, thinking, tool calls): each is at least
        a token (see :func:`~._usage.count_tokens`)."""
        self.thought_chunks = 0
        """Of those, the pieces that carried only thinking."""
        self.passes = 1
        """2: a chat Ollama may run twice, its thinking counted in the second pass's prompt."""
        self.thinking_ns: tuple[int, int] | None = None
        """When the thinking the stream began with came: its first piece and its last."""
        self.streamed_tokens = 0
        """A stream's reply tokens as its pieces show them: one a piece (Ollama streams a
        token a chunk), a tool call's from its length (it comes whole, in one)."""
        self.other_chars = 0
        """The characters of the reply's thinking and tool calls (not its text)."""
        self.shown_bytes = 0
        """The most bytes the answer showed: its text's, and :data:`~._honest.UTF8_MOST` a
        character of its thinking and tool calls (what bounds an honest reply count)."""
        self.final: Final | None = None
        self.reservation: Reservation | None = None
        self.output_cap: int | None = None
        """The reply cap a hard budget admitted the call on: sent to Ollama in the field it honours."""
        self.bound: CallBound | None = None
        """The most tokens a hard budget admitted the call on, in and out."""
        self.prompt_most: Callable[[int], int | None] = _unbounded
        """The most prompt tokens an honest Ollama counts of the request, asked of a count
        (``RequestFacts.prompt_most``); a call opened without its request's facts keeps
        this: no bound."""
        self.time_cap_ns: int | None = None
        """How long a hard budget lets the call run, when its price counts time: it is cut
        once it has run that long at Ollama (see :meth:`time_left_s`)."""
        self.paid_ns: int | None = None
        """The busy time the call's bound pays for: the call is charged no more (see
        :meth:`measure`)."""
        self.stored: Stored | None = None
        """Where the span went once the call closed: the ledger, the spool, ... (None while
        it waits for its commit, :attr:`behind`)."""
        self.behind = False
        """Answered before its span's commit (write-behind): the commit settles its budget."""
        self.heard: Heard | None = None
        """What a gateway in front of Ollama said of the call's record (``meter._elsewhere``)."""
        self.idle_ns = 0
        """Time spent waiting between attempts (a retry's backoff), or at a server that failed
        the call before it moved to another: not the serving Ollama's, so it neither runs out
        :attr:`time_cap_ns` nor is charged as busy time (see :meth:`waiting`, :meth:`moved`)."""
        self.pid = os.getpid()
        """The process that opened the call: its answer goes there, and only there is it
        recorded (a forked child has a copy of each call its parent had open)."""
        self._closes = [self.pid]
        self._t0 = time.perf_counter_ns()
        self._first_ns: int | None = None
        self._consumed = False
        self._timers: set[asyncio.Timeout] = set()

    def ending(self) -> bool:
        """Whether closing the call now is its one close: in the process that opened it, the
        first time. A stream left open is closed as the interpreter exits, then again by its
        generator as it is collected; a child forked while it was open closes its copy (the
        child's span, of a call the parent went on to read, took the parent's row: one id)."""
        if self.pid != os.getpid():
            return False
        try:
            self._closes.pop()  # one thread wins, whichever closes it first
        except IndexError:
            return False
        return True

    def reads_answer(self) -> bool:
        """Whether the meter reads the call's whole answer: it opened it with its request's
        facts (its own routes do); a library caller's own ``Opening`` may observe the usage
        alone, so what it observed bounds nothing."""
        return self.prompt_most is not _unbounded

    def read_here(self) -> None:
        """Refuse to read on in a forked child: the answer comes on the parent's connection,
        so each process would read part of it, and the parent's call hung for the rest."""
        if self.pid != os.getpid():
            raise ValidationError(
                f"this stream was opened by process {self.pid}, which forked since: its answer "
                "goes to that process, so this one cannot read it (nor records it); make the "
                "call in this process"
            )

    @property
    def leases(self) -> tuple[str, ...]:
        """The budget lease rows holding the call's bound (for its journal line)."""
        return () if self.reservation is None else self.reservation.rows

    def observe(self, event: Delta | Final) -> None:
        """Take one piece of the answer: a reply delta, or the final usage record."""
        if self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        if isinstance(event, Final):
            self.final = event
        elif event.generated:  # thinking and tool calls are reply tokens too
            thought = not event.text and not event.call_chars and event.other_output
            if thought and self.content_chunks == self.thought_chunks:  # nothing answered yet
                now = time.perf_counter_ns()
                self.thinking_ns = (self.thinking_ns or (now, now))[0], now
            self.content_chunks += 1
            self.thought_chunks += thought
            self.streamed_tokens += max(1, tokens_in_chars(event.call_chars))
            self.other_chars += event.other_chars
            self.shown_bytes += bytes_of(event.text) + UTF8_MOST * event.other_chars
            if event.calls is not None and self.calls is not None:
                if self.calls_chars < KEPT_REPLY_CHARS and len(self.calls) < KEPT_CALL_PIECES:
                    self.calls.append(event.calls)
                self.calls_chars += event.call_chars
            if event.text and self.keep_reply:
                room = KEPT_REPLY_CHARS - self.reply_chars
                if room > 0:
                    self.reply_parts.append(event.text[:room])
                self.reply_chars += len(event.text)

    def answered(self) -> None:
        """The upstream answered 200, and the answer was lost or unreadable: it consumed.

        Ollama writes a non-streamed answer only once it has all of it, and a stream's 200
        with its first item (its headers go with the first write), so the prompt is charged
        (estimated) even when the answer is then lost on the way, too large to take, or
        cannot be read; never a silent $0 for work that was done. No item was read, so
        there is no first token to time.
        """
        self._consumed = True

    def take(self, events: Iterable[Event]) -> UpstreamError | None:
        """Observe ``events`` in order; the failure that ends the answer, if any.

        That is the failure the answer reports, or :class:`OverCap` when a stream goes
        past :attr:`output_cap` (each piece of a stream is at least one token), so a
        server that ignores the cap cannot spend past the hard budget that set it.
        """
        for event in events:
            if isinstance(event, UpstreamError):
                return event
            self.observe(event)
            cap = self.output_cap
            passes = self.bound.passes if self.bound is not None else 1  # each up to the cap
            if cap is not None and self.span.stream and self.content_chunks > cap * passes:
                return OverCap(
                    f"{self.span.upstream_host or 'Ollama'} streamed more than the {cap:,} "
                    f"reply tokens the call was admitted on (sent as its cap"
                    f"{', in each of its two passes' if passes > 1 else ''}): the answer "
                    "was cut there, so the hard budget holds"
                )
            if (
                self.time_cap_ns is not None
                and self.span.stream
                and not isinstance(event, Final)  # the answer is whole: nothing left to stop
                and self.time_left_s() == 0
            ):
                return self.out_of_time()
        return None

    def time_left_s(self) -> float | None:
        """Seconds until the call has run as long at Ollama as it was admitted on (0: it has;
        None: no limit). Waiting to be sent (queue time: for a gateway's slot, for an on_start
        hook), or to retry, is not Ollama's time."""
        if self.time_cap_ns is None:
            return None
        ran = time.perf_counter_ns() - self._t0 - (self.span.queue_ns or 0) - self.idle_ns
        return max(self.time_cap_ns - ran, 0) / 1e9

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A wait between attempts (``upstream.Waits``): Ollama is not serving the call meanwhile,
        so the wait is kept out of its time. A cut already waiting (:meth:`in_time`) is held
        off for as long: it never comes during the wait, nor sooner after it."""
        held = [(timer, timer.when()) for timer in self._timers if not timer.expired()]
        for timer, _ in held:
            timer.reschedule(None)
        started = time.perf_counter_ns()
        try:
            yield
        finally:
            waited = time.perf_counter_ns() - started
            self.idle_ns += waited
            for timer, when in held:
                if when is not None and not timer.expired():
                    timer.reschedule(when + waited / 1e9)

    def moved(self, spent_ns: int) -> None:
        """The call spent ``spent_ns`` at a server that failed it, and moves to another: that
        time is not the serving server's (as a wait between attempts is not, :meth:`waiting`)."""
        self.idle_ns += max(spent_ns, 0)

    @property
    def caller(self) -> str:
        """Whose call it is, for the circuit breaker: ``tenant/department`` (its own circuit
        for a model; a model's opens only on failures from two callers or more)."""
        return caller_of(self.span.tenant, self.span.department)

    def deadline(self) -> float | None:
        """When, in the running event loop's time, the call has run all it was admitted on."""
        left = self.time_left_s()
        return None if left is None else asyncio.get_running_loop().time() + left

    def in_time(self, deadline: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Waiting on Ollama until ``deadline`` (:meth:`deadline`); past it, the call is cut:
        :meth:`out_of_time` is raised (a whole answer, or a silent stream, sends nothing
        that :meth:`take` could stop it on). Without a deadline it costs nothing per chunk."""
        return _NO_LIMIT if deadline is None else self._cut_at(deadline)

    @contextlib.asynccontextmanager
    async def _cut_at(self, deadline: float) -> AsyncIterator[None]:
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                self._timers.add(timer)  # held off while the call waits to retry
                try:
                    yield
                finally:
                    self._timers.discard(timer)
        except TimeoutError:
            if not timer.expired():
                raise
            raise self.out_of_time() from None

    def out_of_time(self) -> OverCap:
        """The failure of a call cut at :attr:`time_cap_ns`."""
        seconds = (self.time_cap_ns or 0) / 1e9
        return OverCap(
            f"{self.span.upstream_host or 'Ollama'} ran the call longer than the {seconds:,.1f} s "
            "of busy time it was admitted on (the model is slower than its recent calls): "
            "the answer was cut there, so the hard budget holds"
        )

    def _priced_as_admitted(self, answered: str | None) -> str | None:
        """The model the answer names, kept when pricing it by that name stays within the bound.

        A span is priced by the model the answer names (:meth:`PriceBook.cost_of`), but a
        hard budget bounded the call (:attr:`bound`) by the rule for the model asked for, the
        only name known before it runs. An answer naming a model another rule prices (a proxy
        that routes a name to another model, a server that lies) was charged by that rule:
        a call for llama3.1:8b answered as llama3.1:70b spent twenty times what the budget
        held for it, and one for a model no rule prices was admitted on nothing at all. Such
        a call is priced by the rule it was admitted on: its span keeps the model asked for
        (so a reprice finds the same rule), and a ``WARNING`` names the one the answer gave.
        """
        span = self.span
        if answered is None or self.bound is None or answered == span.request_model:
            return answered
        named = self.prices.rule_for(answered, span.started_at)
        if named is None or named == self.prices.rule_for(span.request_model, span.started_at):
            return answered  # priced as the model asked for either way
        log.warning(
            "call %s asked for %s and its answer names %s, priced by another rule; its hard "
            "budget admitted it on the price of %s, so it is charged and recorded as %s",
            span.id,
            span.request_model,
            answered,
            span.request_model,
            span.request_model,
        )
        return None

    def _charge_at_most(self, paid: int) -> None:
        """Busy time (prompt evaluation first) up to ``paid``, what the call's bound paid for.

        The cut waits a model load past it, priced or not (a cold model loads before it
        works); a warm server slower than the model's history generates through that wait,
        or the time runs out as the final chunk comes, and a cut call's clock counts the
        load. Charged in full, any of these spent past the hard budget that timed the call.
        """
        span = self.span
        prompt, rest = span.prompt_eval_duration_ns or 0, span.eval_duration_ns or 0
        if prompt + rest <= paid:
            return
        charged = min(prompt, paid)
        span.prompt_eval_duration_ns, span.eval_duration_ns = charged, min(rest, paid - charged)
        if span.duration_source == DurationSource.REPORTED:
            log.warning(
                "call %s to %s reported %.3f s of busy time past the %.3f s its hard budget "
                "paid for (a server slower than the model's recent calls); charged %.3f s",
                span.id,
                span.request_model,
                (prompt + rest - paid) / 1e9,
                paid / 1e9,
                paid / 1e9,
            )

    @property
    def reply(self) -> str:
        kept = "".join(self.reply_parts)
        more = self.reply_chars - len(kept)
        return f"{kept} [... {more:,} characters more, not kept]" if more > 0 else kept

    def measure(self, ended_ns: int, *, ok: bool = False) -> None:
        """Fill the span's timings and tokens from what was observed.

        ``ok``: the call ended well (or was cut while Ollama served it), so even with nothing
        observed it consumed its prompt and the time it ran.
        """
        span = self.span
        span.latency_ns = ended_ns - self._t0
        span.ended_at = span.started_at + timedelta(microseconds=span.latency_ns // 1000)
        final = self.final
        if final is not None and final.only is not None and self.evaluates:
            # "Nothing ran" for a call that sent something to run: not Ollama (which only
            # loads for an empty prompt, no messages, no input), so its zeros are not
            # believed; the counts are estimated.
            final = dataclasses.replace(
                final,
                input_tokens=None,
                output_tokens=None,
                prompt_eval_ns=None,
                eval_ns=None,
                only=None,
            )
        no_token = final is not None and final.output_tokens == 0 and not self.content_chunks
        if span.stream and self._first_ns is not None and not no_token:
            span.ttft_ns = self._first_ns - self._t0  # a call that generated nothing has none
        if final is not None:
            span.response_model = self._priced_as_admitted(final.model or None)
            span.done_reason, span.response_id = final.done_reason, final.response_id
            span.dimensions = final.dimensions
            span.total_duration_ns, span.load_duration_ns = final.total_ns, final.load_ns
            span.prompt_eval_duration_ns = final.prompt_eval_ns
            span.eval_duration_ns = final.eval_ns
            within_latency(self.span)
        if final is None and self._first_ns is None and not (ok or self._consumed):
            return  # the upstream never answered: nothing was consumed
        if span.prompt_eval_duration_ns is None and span.eval_duration_ns is None:
            # The upstream did not say how long it was busy (Ollama's /v1 routes never do;
            # an aborted stream has no final chunk): the meter's own clock stands in, and
            # says so. Time waiting to be sent (for a gateway's slot, an on_start hook), or to
            # retry, is not Ollama's (both come before the answer's first byte), nor is a load it
            # reported (/api/embed reports one, and no other time): priced once, not twice.
            waited = min(
                (span.queue_ns or 0) + self.idle_ns + max(span.load_duration_ns or 0, 0),
                span.latency_ns,
            )
            first = max(span.ttft_ns or 0, waited)
            span.prompt_eval_duration_ns, span.eval_duration_ns = (
                first - waited,
                span.latency_ns - first,
            )
            span.duration_source = DurationSource.MEASURED
        elif final is not None and final.only == "load" and span.load_duration_ns is None:
            # Ollama says only that it loaded the model: the call's time at Ollama was the
            # load (priced as one, with charge_load), timed by the meter's clock.
            waited = min((span.queue_ns or 0) + self.idle_ns, span.latency_ns)
            span.load_duration_ns = span.latency_ns - waited
            span.duration_source = DurationSource.MEASURED
        else:
            span.duration_source = DurationSource.REPORTED
        if span.duration_source == DurationSource.REPORTED:
            charge_unreported_pass(self)
        if self.paid_ns is not None:
            self._charge_at_most(self.paid_ns)
        count_tokens(self, final)


def _unbounded(said: int | None = None) -> None:
    """No bound of the prompt is known (a call opened without a request's facts)."""
