"""The meter: the one sequence every metered call goes through (DESIGN §2).

    attribute → admit (budgets) → open span → the call → measure → price → write → settle

Entry points (CLI, gateway, Python API) differ only in how they reach Ollama: they open a
:class:`MeteredCall` here, feed it what Ollama sent (in the meter's vocabulary, see
``ollama_meter.upstream``), and let the meter close it. Budgets, telemetry and alerts attach
as observers and a gate on this sequence; the ledger never calls back into it. How the pieces
are built from settings is ``_wiring.py``'s job; this module only runs the sequence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ollama_meter._logging import Throttled
from ollama_meter._names import HOLDS_KEY, holds_key
from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets import BudgetGate, HiddenPrompts, ShownPrompts
from ollama_meter.errors import (
    LedgerError,
    UnreadableRow,
    ValidationError,
)
from ollama_meter.meter._admit import Admitting
from ollama_meter.meter._attribution import Attribution
from ollama_meter.meter._behind import WriteBehind, settled
from ollama_meter.meter._call import MeteredCall
from ollama_meter.meter._elsewhere import leave_to_gateway, leaves_to_gateway
from ollama_meter.meter._ending import closed, mark_ended
from ollama_meter.meter._observers import (
    SpanObserver,
    may_change_spans,
    may_wait,
    notify,
    reads_requests,
)
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.meter._request import Opening, RequestFacts
from ollama_meter.meter._run import Run
from ollama_meter.meter._usage import RecentCalls
from ollama_meter.meter._writer import GroupCommitWriter, once_more
from ollama_meter.records import (
    NO_HOST,
    Source,
    SpanRecord,
    Status,
    Stored,
    Usage,
    make_storable,
    new_span_ids,
)
from ollama_meter.upstream import tool_calls

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger
    from ollama_meter.meter._prices import PriceSource

log = logging.getLogger("ollama_meter.meter")

Clock = Callable[[], datetime]

DEFAULT_REPLY_CAP = 4096  # reply tokens under a hard budget, for a call that sets no cap


def utc_now() -> datetime:
    return datetime.now(UTC)


def _held(call: MeteredCall) -> Usage | None:
    """What the call's hard budgets hold for it, as usage (for its journal line): were its
    process killed, it is charged that, not its prompt alone (test_killed_mid_reply.py)."""
    return None if call.reservation is None else call.reservation.usage


class Transport(Protocol):
    """What the meter knows of the upstream its calls go to (either transport in ``upstream``)."""

    host: str

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class Meter(Admitting):
    """Runs the metering sequence. One per process and upstream; thread-safe."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        prices: PriceSource,
        upstream: Transport,
        source: Source,
        clock: Clock = utc_now,
        observers: Sequence[SpanObserver] = (),
        budgets: BudgetGate | None = None,
        capture_content: bool = False,
        reply_cap: int = DEFAULT_REPLY_CAP,
        journal: bool = True,
        shown: ShownPrompts | None = None,
    ) -> None:
        self.budgets = budgets
        self.reply_cap = reply_cap
        self.journal = journal
        self._recent = RecentCalls(ledger)
        self._hidden = HiddenPrompts()
        self.shown = shown or ShownPrompts([upstream.host])  # the servers calls may go to
        self.capture_content = capture_content
        self.ledger = ledger
        self.prices = prices
        self.upstream = upstream
        self.source = Source(source)
        self.clock = clock
        self.observers = list(observers)
        self.writer, self.failures = GroupCommitWriter(ledger), Throttled(log)
        self.behind: WriteBehind | None = None  # commits spans after their calls answer
        self.chained: bool | None = None  # its upstream a gateway on its ledger? (_elsewhere)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        source: Source | str,
        clock: Clock = utc_now,
        observers: Sequence[SpanObserver] = (),
        http: Mapping[str, Any] | None = None,
    ) -> Meter:
        """A meter wired to the configured ledger, prices, budgets, telemetry and Ollama
        (by ``_wiring.build_meter``, the one composition root). ``http``: the httpx arguments
        the Python API's caller gave, for its calls to Ollama."""
        from ollama_meter.meter._wiring import build_meter

        return build_meter(
            settings, source=Source(source), clock=clock, observers=observers, http=http
        )

    # -- opening -------------------------------------------------------------------------

    def open(self, opening: Opening) -> MeteredCall:
        """Start a call: attribute it, let the budgets admit it (or refuse it), open its span.
        Raises :class:`LedgerError` while nothing can be recorded (the call is not made),
        :class:`BudgetExceeded` when a hard budget has no room for the call's bound."""
        return self._open(opening, blocking=True)

    def try_open(self, opening: Opening) -> MeteredCall | None:
        """:meth:`open` in memory only, for an event loop; None when it needs the ledger.

        It needs the ledger when a snapshot (prices, budgets, a model's recent calls) must
        be loaded, a budget's lease renewed or given back, a refusal written, or spans
        wait for the database. Then nothing happened: call :meth:`open` from a thread.
        """
        try:
            return self._open(opening, blocking=False)
        except WouldBlock:
            return None

    def _open(self, opening: Opening, *, blocking: bool) -> MeteredCall:
        model = opening.model
        if not model or not model.strip():
            raise ValidationError(
                "no model given; name one, e.g. llama3.1:8b (-m on the command line)"
            )
        if holds_key(model):  # stored on its span, shown by every report: never a key's text
            raise ValidationError(f"the model name {HOLDS_KEY}")
        if blocking:
            self.ledger.check_writable()
        elif self.ledger.held:
            raise WouldBlock("spans wait for the database")
        prices = self.prices() if blocking else self.prices.cache.snapshot()
        facts = opening.facts or RequestFacts(prompt_text="", prompt_bytes=0)
        span = self._new_span(
            opening.operation, model, opening.stream, opening.attribution, prices.currency
        )
        if self.capture_content:  # who said which texts of the prompt it keeps, to export
            span.said, span.told = facts.told_apart()
        if reads_requests(self.observers):  # for telemetry and hooks: the request's settings
            span.asked = facts.asked
        try:
            prices.check(model)  # a rule row broken in SQL that may price it: its words, a 503
        except UnreadableRow as broken:
            self._refused(
                span, prices, broken, "ledger_unavailable", http_status=503, blocking=blocking
            )
        keep_reply = self.capture_content or not opening.stream  # a whole reply: estimated
        call = MeteredCall(
            span, facts.prompt_text, prices, keep_reply=keep_reply,
            keep_calls=self.capture_content, evaluates=facts.evaluates,
            input_estimate=facts.input_estimate(), pictures=facts.images,  # its tools too
        )  # fmt: skip
        call.passes, call.prompt_most = facts.passes, (opening.facts or call).prompt_most
        if self.budgets is not None:
            self._admit(self.budgets, call, facts, prices, blocking=blocking)
        if not opening.queued:  # admitted, it goes to Ollama now; a queued one, with its slot
            span.upstream_host = self.upstream.host
        make_storable(span)  # what observers see (telemetry exports it) and the journal keeps
        stopped = notify(self.observers, "on_start", span)
        if stopped is not None:  # Ctrl-C in a hook: the call, admitted, ends here
            span.upstream_host = NO_HOST  # before it was sent
            self.close(call, stopped)
            raise stopped
        # Journaled once its hooks are done, as it goes to Ollama: killed in a slow on_start
        # hook (a wait of the caller's, as for a gateway's slot), it is charged nothing, not
        # its prompt as interrupted; its budget hold lapses (RESERVATION_TTL), as a queued one's.
        if self.journal and not opening.queued:
            self.ledger.journal.opened(span, call.input_estimate, call.leases, _held(call))
        return call

    def sending(self, call: MeteredCall) -> None:
        """Journal a ``queued`` call as it leaves for Ollama: killed from here on, it is interrupted."""
        if self.journal:
            self.ledger.journal.opened(call.span, call.input_estimate, call.leases, _held(call))

    def _new_span(
        self, operation: str, model: str, stream: bool, who: Attribution, currency: str
    ) -> SpanRecord:
        row_id, trace_id, span_id = new_span_ids()
        return SpanRecord(
            id=row_id,
            trace_id=trace_id if who.parent is None else who.parent.trace_id,  # its caller's
            span_id=span_id,
            started_at=self.clock(),
            tenant=who.tenant,
            department=who.department,
            user=who.user,
            tags=dict(who.tags),
            source=self.source,
            operation=operation,
            upstream_host=NO_HOST,  # until the call is sent to a server (refused: never)
            request_model=model,
            stream=stream,
            currency=currency,
            parent=who.parent,
        )

    def refuse(
        self,
        *,
        operation: str,
        model: str,
        attribution: Attribution,
        error_type: str,
        message: str,
        http_status: int,
        stream: bool = False,
        status: Status = Status.ERROR,
    ) -> SpanRecord:
        """Record a call refused before metering could start (a malformed request, no key);
        ``status`` REJECTED: refused by policy (a rate limit), not failed."""
        prices = self.prices()
        span = self._new_span(operation, model[:255], stream, attribution, prices.currency)
        span.fail(error_type, message, status=status, http_status=http_status, instant=True)
        # Priced as every span is (at 0: Ollama was not asked): a reprice finds nothing to move.
        span.apply_cost(prices.cost_of(span))
        self._record(span)
        return span

    # -- closing -------------------------------------------------------------------------

    def close(self, call: MeteredCall, error: BaseException | None = None) -> SpanRecord:
        """Measure, price and write the call (not when a gateway on this ledger recorded it:
        ``_elsewhere.py``); the span is durable when this returns (in the journal, waiting for
        its commit: :attr:`behind`). Raises :class:`LedgerError` when not even memory keeps it."""
        behind = self.behind
        return self._close(call, error, behind=behind is not None and behind.room(call))

    def close_now(self, call: MeteredCall, error: BaseException | None = None) -> bool:
        """:meth:`close` on an event loop if the span can wait for its commit; else False."""
        behind = self.behind
        # A call a gateway behind this one recorded gives its budget hold back: in a thread.
        if behind is None or not behind.room(call) or leaves_to_gateway(self, call):
            return False
        self._close(call, error, behind=True, here=True)
        return True

    def _close(
        self, call: MeteredCall, error: BaseException | None, *, behind: bool, here: bool = False
    ) -> SpanRecord:
        if not call.ending() or leave_to_gateway(self, call, error):  # closed; a gateway's
            return call.span
        closed(call)
        # A call the meter cut (past its cap or its time), or whose whole answer came, consumed.
        call.measure(time.perf_counter_ns(), ok=error is None or getattr(error, "consumed", False))
        span = call.span
        mark_ended(span, error)
        if self.capture_content:
            span.prompt, span.reply = call.prompt_text, call.reply
            span.called = tool_calls(call.calls or [])
        # Counts and names came from a caller and from Ollama: bound them before pricing.
        make_storable(span)
        span.apply_cost(call.prices.cost_of(span))
        if call.bound is not None:
            self._hidden.past_bound(span, call.bound)
        if call.reservation is not None and self.budgets is not None:  # held until settled
            self.budgets.ended(call.reservation, span.cost_total)
        try:  # it says where the span went in call.stored (the commit thread, if it waits)
            self._record(span, storable=True, call=call, behind=behind, here=here)
        finally:
            if not call.behind:  # committed here (or not): settled now, not by the commit thread
                settled(self, [call])
        return span

    def _record(
        self,
        span: SpanRecord,
        *,
        storable: bool = False,
        call: MeteredCall | None = None,
        away: LedgerError | None = None,
        behind: bool = False,
        here: bool = False,
    ) -> Stored | None:
        """Hand a finished span to the observers, then make it durable; says where it went
        (None: whole in the journal, waiting for its commit: :attr:`behind`).

        Hooks see it before it is written, so the tags they add are kept; what they or anyone
        else put in it is made storable last (``storable``: it is, and only observers could
        change that). An interrupt in a hook is raised once the span is written (and
        ``call.stored`` says where). ``away``: why the ledger cannot take it (found so just
        now): it goes to the spool at once. ``behind``: it may wait for its commit (``here``:
        must, on an event loop)."""
        if not storable:
            make_storable(span)
        stopped = None
        if self.observers:
            if call is not None and self.journal and may_wait(self.observers):
                # A user's hook may take its time (a webhook), or hang: the span is noted
                # whole first, so a process killed meanwhile leaves the call as it ended, not
                # one open since it was sent (recorded as interrupted: its prompt alone).
                self.ledger.journal.finished(span)
            stopped = notify(self.observers, "on_end", span)
            if may_change_spans(self.observers):
                make_storable(span)
        queue = self.behind
        if call is not None and behind and queue is not None and queue.put(span, call, here=here):
            # Whole in the journal, committed once the call has answered: the commit thread
            # says where it went (call.stored), maybe before this line; never overwritten.
            stored = None
        else:
            if away is None:
                stored, landed = once_more(lambda: self.writer.write(span))
            else:  # the ledger was found away just now: not a second wait for it
                stored, landed = once_more(lambda: self.ledger.keep([span], away)[span.id])
            stopped = stopped or landed
            if call is not None:
                call.stored = stored
        if stopped is not None:
            raise stopped
        return stored

    # -- driving calls through the ollama client ----------------------------------------

    def chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        attribution: Attribution,
        stream: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> Run:
        """A metered ``/api/chat`` call; iterate it for Ollama's chunks, then read ``.span``."""
        request = {"model": model, "messages": messages, "options": options}
        return self.run("chat", request, attribution=attribution, stream=stream)

    def run(
        self, operation: str, request: Mapping[str, Any], *, attribution: Attribution, stream: bool
    ) -> Run:
        """Any metered operation (``chat``, ``generate``, ``embed``) with the client's own arguments."""
        return Run(self, operation, request, attribution, stream)

    # -- upkeep --------------------------------------------------------------------------

    def recover_interrupted(self, exporters: Sequence[SpanObserver] = ()) -> int:
        """Record the calls dead processes left open in the journal (see ``_recovery.py``)."""
        return recover_interrupted(self.ledger, self.prices, exporters)

    def keep_fresh(self) -> None:
        """Read prices and budgets now (in force if the ledger goes away); calls read snapshots."""
        self.prices.cache.keep_fresh()
        if self.budgets is not None:
            self.budgets.cache.keep_fresh()
            self.ledger.looks_at_budgets = True  # in each commit of spans: see _behind.settled

    def refresh(self) -> None:
        """Reload the prices and budgets that are due (a server's background task); never raises."""
        self.prices.cache.refresh()
        if self.budgets is not None:
            self.budgets.cache.refresh()

    def close_upstream(self) -> None:
        self.upstream.close()

    async def aclose_upstream(self) -> None:
        """:meth:`close_upstream` on the event loop the async calls ran on, closing theirs too."""
        await self.upstream.aclose()
