"""Admission: a call's hard budgets reserve its bound before it is sent, or refuse it.

:class:`Admitting` is the part of :class:`~ollama_meter.meter.Meter` that does it, and writes
the span of every call it does not let through: refused by a budget (429), a budget or price
it cannot check (503), a bug in the check.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn, cast

from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets import bound_cost, unbounded
from ollama_meter.errors import BudgetExceeded, LedgerError, OmeterError, UnreadableRow
from ollama_meter.meter._elsewhere import holding
from ollama_meter.records import SpanRecord, Status

if TYPE_CHECKING:
    from ollama_meter.budgets import BudgetGate, HiddenPrompts, ShownPrompts
    from ollama_meter.meter._call import MeteredCall
    from ollama_meter.meter._meter import Meter
    from ollama_meter.meter._request import RequestFacts
    from ollama_meter.meter._usage import RecentCalls
    from ollama_meter.pricing import PriceBook
    from ollama_meter.records import Stored


class Admitting:
    """A meter's admission of calls under hard budgets."""

    reply_cap: int
    shown: ShownPrompts
    _hidden: HiddenPrompts
    _recent: RecentCalls

    if TYPE_CHECKING:

        def _record(
            self, span: SpanRecord, *, away: LedgerError | None = None
        ) -> Stored | None: ...

    def _admit(
        self,
        gate: BudgetGate,
        call: MeteredCall,
        facts: RequestFacts,
        prices: PriceBook,
        *,
        blocking: bool,
    ) -> None:
        """Reserve the call's bound in every hard budget; a refusal is a ``rejected`` span, then raised.

        A call under a hard budget is sent with the reply cap it was admitted on (:attr:`reply_cap`
        if the caller set none) in the field Ollama honours, whatever field the caller used.
        """
        span, admitting = call.span, time.perf_counter_ns()
        if blocking:
            try:
                covering = gate.budgets_for(span.tenant, span.department)
            except UnreadableRow as broken:  # a budget row broken in SQL that may cover it
                self._refused(span, prices, broken, "ledger_unavailable", http_status=503)
        else:
            known = gate.cached_budgets_for(span.tenant, span.department)
            if known is None:
                raise WouldBlock("the budgets must be read from the ledger first")
            covering = known
        if not any(b.hard for b in covering):
            return
        model = span.request_model
        if facts.passes > 1 and not self.shown.thinks(model, blocking=blocking):
            facts = replace(facts, passes=1)  # its servers say it does not think: one pass
        shape = facts.shape  # what its template writes of the call
        shown = None if facts.embedding else self.shown.tokens(model, shape, blocking=blocking)
        limits = self._hidden.added(model, facts.bound(self.reply_cap, blocking=blocking), shown)
        call.bound = limits
        if not facts.embedding:
            call.output_cap = limits.output_tokens
        try:
            if facts.unbounded:  # whatever the budgets have left
                raise unbounded(covering, span.tenant, facts.unbounded, span.started_at, gate.tz)
            bound = bound_cost(
                prices,
                span.request_model,
                span.started_at,
                limits,
                self._recent.of(span.request_model, blocking=blocking),
            )
            call.time_cap_ns, call.paid_ns = bound.wait_ns, bound.busy_ns
            call.reservation = gate.admit(
                call_id=span.id,
                tenant=span.tenant,
                department=span.department,
                estimate=bound,
                now=span.started_at,
                blocking=blocking,
                model=model,
                **holding(cast("Meter", self), span),
            )
            # The admission (a busy ledger, Ollama asked for the model's prompt) came before the
            # call is sent: queue time, as a slot's wait is; not Ollama's, priced or capped.
            span.queue_ns = (span.queue_ns or 0) + time.perf_counter_ns() - admitting
        except LedgerError as exc:
            # A hard budget that cannot be checked is not waved through.
            unchecked = LedgerError(
                f"the budget for {span.tenant}/{span.department} cannot be checked, so the "
                f"call was not made: {exc}. Retry when the database is back"
            )
            self._refused(
                span, prices, unchecked, "ledger_unavailable", http_status=503, away=unchecked
            )
        except BudgetExceeded as refusal:
            self._refused(
                span, prices, refusal, refusal.error_type, Status.REJECTED, 429, blocking=blocking
            )
        except WouldBlock:
            raise
        except Exception as exc:  # a bug, not the caller's: the call is not made, still a span
            said = f"the budget check failed: {exc}"
            self._refused(span, prices, exc, type(exc).__name__, said=said, blocking=blocking)

    def _refused(
        self,
        span: SpanRecord,
        prices: PriceBook,
        exc: Exception,
        error_type: str,
        status: Status = Status.ERROR,
        http_status: int | None = None,
        *,
        said: str | None = None,
        blocking: bool = True,
        away: LedgerError | None = None,
    ) -> NoReturn:
        """The call of ``span`` is not made: its span, failed with ``error_type`` and ``said``
        (``exc``'s words unless given), priced at 0 and recorded (to the spool when the ledger
        is ``away``), then ``exc`` raised naming it; on an event loop, :class:`WouldBlock`.
        A refusal for a row broken in SQL (a budget, a price) used to leave no span."""
        if not blocking:
            raise WouldBlock("a refusal is written to the ledger") from exc
        message = str(exc) if said is None else said
        span.fail(error_type, message, status=status, http_status=http_status, instant=True)
        span.apply_cost(prices.cost_of(span))
        self._record(span, away=away)
        if isinstance(exc, OmeterError):
            exc.span_id = span.id
        raise exc
