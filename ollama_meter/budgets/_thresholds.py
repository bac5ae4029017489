"""Budget alerts: each threshold the settled spend reaches fires once per budget, tenant and
period, checked after a call settles; the ledger is read only when a threshold may have been
crossed (:class:`ThresholdAlerts`, part of :class:`~ollama_meter.budgets._gate.BudgetGate`).

A hard budget refuses a call whose bound does not fit what is left, so its spend may stay
below 100 % while it refuses every call. A refusal fires an alert of its own (kind
``refused``), truthful at any spend: once per budget, tenant, period and the highest threshold
the spend had reached then (0 for none), and again under a changed limit. A refusal only calls in flight are in the way of
(room that comes back within seconds) fires none."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ollama_meter._logging import Throttled
from ollama_meter.budgets._leases import WATCH_SECONDS, Watches, crossed
from ollama_meter.periods import Window, current_period
from ollama_meter.records import Alert, Budget, LeaseKey

MAX_SAID = 10_000
"""Refusal alerts a process remembers having claimed (then it forgets them all and asks the
ledger again): a flood of refused calls writes to the ledger once per budget and band."""


def alert_of(
    budget: Budget, tenant: str, window: Window, spent: int, threshold: int, **kind: Any
) -> Alert:
    """The alert of ``budget`` for ``tenant`` in ``window`` (``kind``: a refusal's fields)."""
    assert budget.id is not None
    return Alert(
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
        **kind,
    )


def reached(budget: Budget, tenant: str, window: Window, spent: int) -> list[Alert]:
    """An alert for each threshold of ``budget`` that ``spent`` has reached."""
    return [
        alert_of(budget, tenant, window, spent, threshold)
        for threshold in budget.thresholds
        if spent * 100 >= threshold * budget.limit
    ]


def _claimed(
    store: BudgetWrites, alerts: list[Alert], now: datetime, *, saying: bool
) -> list[Alert]:
    """Those of ``alerts`` no process said before, claimed in the ledger (once across them).

    ``saying``: this process says each in its log once the claim is committed
    (:meth:`ThresholdAlerts._dispatched`), so the row says the log has it: a process
    starting meanwhile read it as unsaid and said it again (test_alert_sweep.py)."""
    said = {"log": "sent"} if saying else {}
    claimed = ((alert, store.claim_alert(replace(alert, deliveries=said), now)) for alert in alerts)
    return [replace(alert, id=alert_id) for alert, alert_id in claimed if alert_id is not None]


def refused_alert(budget: Budget, tenant: str, window: Window, spent: int, need: int) -> Alert:
    """The alert for a call ``budget`` refused: ``spent`` leaves no room for ``need``."""
    reached = [t for t in budget.thresholds if spent * 100 >= t * budget.limit]
    return alert_of(
        budget, tenant, window, spent, max(reached, default=0), kind="refused", call_bound=need
    )


if TYPE_CHECKING:
    from ollama_meter.budgets._alerts import AlertDispatcher
    from ollama_meter.budgets._store import BudgetStore, BudgetWrites


class ThresholdAlerts:
    """The gate's alerts; it provides the attributes below."""

    ledger: BudgetStore
    tz: ZoneInfo
    alerts: AlertDispatcher | None
    _watch: Watches
    _lock: threading.Lock
    _clock: Callable[[], float]
    _failures: Throttled
    _refusals_said: set[tuple[LeaseKey, int, int]]
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
                fired += self._claimed(store, reached(budget, tenant, window, spent), now)
        return self._dispatched(fired)

    def sweep_alerts(self, now: datetime) -> list[Alert]:
        """Fire each threshold any budget's spend has reached that no process said, this period
        and the one before: a call's own check comes after its span is committed, so a process
        killed in between (its span recovered from its journal), a spool drained after an
        outage or an import left it said never, on a budget with no later call; a gateway
        killed at 23:59 on a month's last day and started at 00:01 said nothing of the month
        it ended (test_alert_sweep.py). A server looks as it starts; the ledger's unique key
        says each once across processes."""
        from ollama_meter.budgets._status import budget_status

        # Read apart, not into the gate's budgets: those load at the first call (a budget set
        # after the start and before it is in force for it, not 5 s later).
        budgets, _ = self.ledger.readable_budgets()
        if not budgets:
            return []
        rows = budget_status(self.ledger, tz=self.tz, now=now, budgets=budgets)
        for period in sorted({b.period for b in budgets}):
            start = current_period(period, tz=self.tz, now=now).start
            in_force = [  # its terms set before the period ended
                b for b in budgets if b.period == period and (b.set_at or now) < start
            ]
            if in_force:
                before = start - timedelta(microseconds=1)
                rows += budget_status(self.ledger, tz=self.tz, now=before, budgets=in_force)
        due = [a for r in rows for a in reached(r.budget, r.tenant, r.window, r.spent)]
        if not due:
            return []
        with self.ledger.budget_transaction() as store:
            fired = self._claimed(store, due, now)
        return self._dispatched(fired)

    def _claimed(self, store: BudgetWrites, alerts: list[Alert], now: datetime) -> list[Alert]:
        return _claimed(store, alerts, now, saying=self.alerts is not None)

    def _dispatched(self, fired: list[Alert]) -> list[Alert]:
        """Say and queue ``fired``, claimed by this process: only once the claim is committed
        (said inside its transaction, a line was out for a claim that could still roll back,
        and the delivery thread, looking for a row not yet committed, found none)."""
        if self.alerts is not None:
            for alert in fired:
                self.alerts.dispatch(alert)  # its own line is said here, not in its row
        return fired

    def _alert_refused(
        self, tenant: str, department: str, now: datetime, refused: list[Alert]
    ) -> None:
        """A call refused: fire the thresholds the settled spend has reached (at most one read
        per ``_leases.WATCH_SECONDS``: checked only after calls that cost something, a spend
        pushed past them by ``ometer reprice`` fired nothing while every call was refused),
        then the refusal's alerts (``refused``, for the budgets whose spend leaves no room for
        the call). A failure here is logged, never instead of the refusal."""
        try:
            self.check_alerts(tenant, department, now, 0)
        except Exception as exc:
            self._failures.failed("checking budget alerts after a refusal", exc)
        try:
            self._claim_refused(refused, now)
        except Exception as exc:  # not remembered as said: the next refusal records it
            self._failures.failed(
                "recording the refusal alert of budget %s (the next refusal tries again)",
                exc,
                ", ".join(f"{a.budget_id} ({a.scope})" for a in refused),
            )

    def _claim_refused(self, refused: list[Alert], now: datetime) -> None:
        """Record each of ``refused`` this process has not claimed yet; dispatch those no other
        process had (the ledger's unique key decides, across processes)."""
        said = self._refusals_said
        due = [a for a in refused if _said(a) not in said]
        if not due:
            return
        with self.ledger.budget_transaction() as store:
            fired = self._claimed(store, due, now)
        if len(said) >= MAX_SAID:
            said.clear()
        said.update(map(_said, due))  # committed: claimed, here or before
        self._dispatched(fired)

    def _to_check(
        self, budgets: list[Budget], tenant: str, now: datetime, cost: int | None
    ) -> list[Budget]:
        """The budgets whose spend may have crossed a threshold; the rest keep counting here."""
        due = []
        with self._lock if cost else nullcontext():  # a refused call's adds nothing
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

        # One more than it may hold: the rest it reads back from the ledger as room frees.
        pending = self.ledger.alerts(
            undelivered_only=True, max_attempts=MAX_RUNS, limit=self.alerts.max_held + 1
        )
        for alert in pending:  # said by the process that wins its attempt, if unsaid
            self.alerts.dispatch(alert, say=False)
        return len(pending)


def _said(alert: Alert) -> tuple[LeaseKey, int, int]:
    """What a refusal alert is said once for: its budget, tenant, period, band and limit."""
    return LeaseKey(alert.budget_id, alert.tenant, alert.period_start), alert.threshold, alert.limit
