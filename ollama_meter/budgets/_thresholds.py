"""Budget alerts: each threshold the settled spend reaches fires once per budget, tenant and
period, checked after a call settles; the ledger is read only when a threshold may have been
crossed (:class:`ThresholdAlerts`, part of :class:`~ollama_meter.budgets._gate.BudgetGate`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ollama_meter.budgets._leases import WATCH_SECONDS, Watches, crossed
from ollama_meter.periods import current_period
from ollama_meter.records import Alert, Budget, LeaseKey

if TYPE_CHECKING:
    from ollama_meter.budgets._alerts import AlertDispatcher
    from ollama_meter.budgets._store import BudgetStore


class ThresholdAlerts:
    """The gate's alerts; it provides the attributes below."""

    ledger: BudgetStore
    tz: ZoneInfo
    alerts: AlertDispatcher | None
    _watch: Watches
    _lock: threading.Lock
    _clock: Callable[[], float]
    budgets_for: Callable[[str, str], list[Budget]]

    def check_alerts(
        self, tenant: str, department: str, now: datetime, cost: int | None = None
    ) -> list[Alert]:
        """Fire each threshold the settled spend has reached, once per budget, tenant and period.

        ``cost``, the call just settled, lets the check stay in memory while this process's
        view of the spend (read at most :data:`WATCH_SECONDS` ago, plus what it settled
        since) is below the next threshold; the ledger is read, and alerts claimed there,
        only when a threshold may have been crossed. Without ``cost`` it always reads.
        """
        fired: list[Alert] = []
        budgets = self._to_check(self.budgets_for(tenant, department), tenant, now, cost)
        if not budgets:
            return fired
        with self.ledger.budget_transaction() as store:
            for budget in budgets:
                assert budget.id is not None
                window = current_period(budget.period, tz=self.tz, now=now)
                spent = store.spent(budget, tenant, window.start, window.end)
                self._watch.keep(LeaseKey(budget.id, tenant, window.start), spent, self._clock())
                for threshold in budget.thresholds:
                    if spent * 100 < threshold * budget.limit:
                        break
                    alert = Alert(
                        id=0,
                        budget_id=budget.id,
                        tenant=tenant,
                        department=budget.department,
                        period=budget.period,
                        period_label=window.label,
                        period_start=window.start,
                        threshold=threshold,
                        spent=spent,
                        limit=budget.limit,
                        currency=budget.currency,
                    )
                    alert_id = store.claim_alert(alert, now)
                    if alert_id is not None:
                        fired.append(replace(alert, id=alert_id))
        if self.alerts is not None:
            for alert in fired:
                self.alerts.dispatch(alert)
        return fired

    def _to_check(
        self, budgets: list[Budget], tenant: str, now: datetime, cost: int | None
    ) -> list[Budget]:
        """The budgets whose spend may have crossed a threshold; the rest keep counting here."""
        due = []
        with self._lock:
            for budget in budgets:
                window = current_period(budget.period, tz=self.tz, now=now)
                watch = self._watch.get(LeaseKey(budget.id or 0, tenant, window.start))
                if (
                    cost is None
                    or watch is None
                    or self._clock() - watch.read_at > WATCH_SECONDS
                    or crossed(budget, watch.spent, watch.spent + watch.local + cost)
                ):
                    due.append(budget)
                else:
                    watch.local += cost
        return due

    def retry_undelivered(self) -> int:
        """Queue alerts an earlier run could not deliver; how many."""
        if self.alerts is None:
            return 0
        from ollama_meter.budgets._alerts import MAX_RUNS

        pending = self.ledger.alerts(undelivered_only=True, max_attempts=MAX_RUNS)
        for alert in pending:
            self.alerts.dispatch(alert)
        return len(pending)
