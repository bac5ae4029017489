"""The budget gate: admission before a call, settlement and alerts after it.

Admission runs in one write transaction per call (SQLite's write lock, or an
advisory lock per budget on PostgreSQL): settled spend from the ledger plus
unexpired reservations plus the most this call can cost (its bound, see
``_estimate``) must fit every hard budget, or the call is refused. The bound is
reserved until the call settles, so calls in flight together cannot overshoot
either. Spend is read from the spans themselves, so budgets, reports and
chargeback always agree, and a period rolls over by its key: a new day or month
simply has no spans yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ollama_meter._reloaded import Reloaded
from ollama_meter.budgets._alerts import PERIOD_ADVERB, Alert, AlertDispatcher
from ollama_meter.budgets._estimate import Estimate
from ollama_meter.budgets._model import Budget
from ollama_meter.errors import BudgetExceeded
from ollama_meter.periods import Window, current_period
from ollama_meter.pricing import format_micros

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger

log = logging.getLogger("ollama_meter.budgets")

RESERVATION_TTL = timedelta(minutes=15)
"""How long a reservation holds if its caller dies without settling."""
IN_FLIGHT_RETRY_AFTER = 5
"""Seconds to wait when only money held by calls in flight is in the way."""


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    budget_ids: tuple[int, ...]


class BudgetGate:
    """Budgets for one ledger; reloaded from it every ``ttl`` seconds."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        tz: ZoneInfo,
        alerts: AlertDispatcher | None = None,
        ttl: float = 5.0,
        reservation_ttl: timedelta = RESERVATION_TTL,
    ) -> None:
        self.ledger = ledger
        self.tz = tz
        self.alerts = alerts
        self._reservation_ttl = reservation_ttl
        # While the database is away the budgets loaded before stay in force, so callers
        # no budget covers keep being served.
        self._budgets = Reloaded(ledger.budgets, ttl=ttl, what="budgets")

    def budgets_for(self, tenant: str, department: str) -> list[Budget]:
        """The budgets covering a caller, reloaded from the ledger every ``ttl`` seconds."""
        return [b for b in self._budgets.get() if b.covers(tenant, department)]

    def cached_budgets_for(self, tenant: str, department: str) -> list[Budget] | None:
        """What :meth:`budgets_for` would say, without touching the ledger; None when stale."""
        known = self._budgets.peek()
        return None if known is None else [b for b in known if b.covers(tenant, department)]

    def reload_soon(self) -> None:
        """Read the budgets again on the next call (after this process changed them)."""
        self._budgets.expire()

    def admit(
        self, *, call_id: str, tenant: str, department: str, estimate: Estimate, now: datetime
    ) -> Reservation | None:
        """Reserve room for the call in every hard budget, or raise :class:`BudgetExceeded`."""
        from ollama_meter.ledger import _budgets as store

        hard = [b for b in self.budgets_for(tenant, department) if b.hard]
        if not hard:
            return None
        rows: list[dict[str, Any]] = []
        with self.ledger.write() as conn:
            store.lock_budgets(conn, [b.id for b in hard if b.id is not None])
            for budget in hard:
                assert budget.id is not None
                window = current_period(budget.period, tz=self.tz, now=now)
                if estimate.currency != budget.currency and estimate.amount > 0:
                    raise self._mismatch(budget, tenant, window, estimate, now)
                spent = store.spent(conn, budget, tenant, window.start, window.end)
                held = store.reserved(conn, budget.id, tenant, window.start, now)
                need = estimate.amount if estimate.currency == budget.currency else 0
                if spent >= budget.limit or spent + need > budget.limit:
                    raise self._refusal(budget, tenant, window, spent, 0, need, now)
                if spent + held + need > budget.limit:
                    raise self._refusal(budget, tenant, window, spent, held, need, now)
                rows.append(
                    {
                        "id": call_id,
                        "budget_id": budget.id,
                        "tenant": tenant,
                        "period_start": window.start,
                        "amount_micros": need,
                        "expires_at": now + self._reservation_ttl,
                    }
                )
            store.add_reservations(conn, rows)
        return Reservation(call_id, tuple(row["budget_id"] for row in rows))

    def _refusal(
        self,
        budget: Budget,
        tenant: str,
        window: Window,
        spent: int,
        held: int,
        need: int,
        now: datetime,
    ) -> BudgetExceeded:
        """Why the call does not fit; ``held`` > 0 means only calls in flight are in the way."""
        head = (
            f"{budget.kind} budget {budget.id} for {budget.scope(tenant)} "
            f"({PERIOD_ADVERB[budget.period]} {window.label}) refuses the call: spent "
            f"{format_micros(spent)} of {format_micros(budget.limit)} {budget.currency}"
        )
        needs = f"this call may cost up to {format_micros(need)}"
        until_end = max(1, int((window.end - now).total_seconds()))
        if held:
            return BudgetExceeded(
                f"{head}, and calls in flight hold {format_micros(held)} more; {needs}, which "
                f"fits once they settle: retry in a few seconds",
                budget_id=budget.id or 0,
                retry_after=min(IN_FLIGHT_RETRY_AFTER, until_end),
            )
        resumes = window.end.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")
        hint = (
            "; set a smaller num_predict/max_tokens or a shorter prompt to fit"
            if need and spent < budget.limit
            else ""
        )
        return BudgetExceeded(
            f"{head}; {needs}{hint}; the next period starts {resumes}"
            if need
            else f"{head}; the next period starts {resumes}",
            budget_id=budget.id or 0,
            retry_after=until_end,
        )

    def _mismatch(
        self, budget: Budget, tenant: str, window: Window, estimate: Estimate, now: datetime
    ) -> BudgetExceeded:
        return BudgetExceeded(
            f"{budget.kind} budget {budget.id} for {budget.scope(tenant)} counts "
            f"{budget.currency}, but this model is priced in {estimate.currency}: the budget "
            "could not count the call, so it is refused. Use one currency for the budget and "
            "the price rules",
            budget_id=budget.id or 0,
            retry_after=max(1, int((window.end - now).total_seconds())),
        )

    def settle(self, reservation: Reservation) -> None:
        """Release the call's reservation; its span, now in the ledger, carries the actual cost."""
        from ollama_meter.ledger import _budgets as store

        with self.ledger.write() as conn:
            store.drop_reservations(conn, reservation.id)

    def check_alerts(self, tenant: str, department: str, now: datetime) -> list[Alert]:
        """Fire each threshold the settled spend has reached, once per budget, tenant and period."""
        from ollama_meter.ledger import _budgets as store

        fired: list[Alert] = []
        budgets = self.budgets_for(tenant, department)
        if not budgets:
            return fired
        with self.ledger.write() as conn:
            for budget in budgets:
                assert budget.id is not None
                window = current_period(budget.period, tz=self.tz, now=now)
                spent = store.spent(conn, budget, tenant, window.start, window.end)
                for threshold in budget.thresholds:
                    if spent * 100 < threshold * budget.limit:
                        break
                    values = {
                        "budget_id": budget.id,
                        "tenant": tenant,
                        "department": budget.department,
                        "period": budget.period,
                        "period_start": window.start,
                        "period_label": window.label,
                        "threshold": threshold,
                        "spent_micros": spent,
                        "limit_micros": budget.limit,
                        "currency": budget.currency,
                        "fired_at": now,
                        "deliveries": {},
                        "delivered": False,
                        "attempts": 0,
                    }
                    alert_id = store.claim_alert(conn, values)
                    if alert_id is not None:
                        fired.append(_alert(alert_id, values))
        if self.alerts is not None:
            for alert in fired:
                self.alerts.dispatch(alert)
        return fired

    def retry_undelivered(self) -> int:
        """Queue alerts an earlier run could not deliver; how many."""
        if self.alerts is None:
            return 0
        from ollama_meter.budgets._alerts import MAX_RUNS

        pending = self.ledger.alerts(undelivered_only=True, max_attempts=MAX_RUNS)
        for row in pending:
            values = {key: getattr(row, key) for key in _ALERT_KEYS}
            self.alerts.dispatch(_alert(row.id, values), dict(row.deliveries or {}))
        return len(pending)


_ALERT_KEYS = (
    "budget_id", "tenant", "department", "period", "period_start", "period_label",
    "threshold", "spent_micros", "limit_micros", "currency",
)  # fmt: skip


def _alert(alert_id: int, values: dict[str, Any]) -> Alert:
    return Alert(
        id=alert_id,
        budget_id=values["budget_id"],
        tenant=values["tenant"],
        department=values["department"],
        period=values["period"],
        period_label=values["period_label"],
        period_start=values["period_start"],
        threshold=values["threshold"],
        spent=values["spent_micros"],
        limit=values["limit_micros"],
        currency=values["currency"],
    )
