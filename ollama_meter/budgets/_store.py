"""What budgets need from where they are kept: a small protocol the ledger implements.

Budgets decide (admission, leases, thresholds); the store answers and writes
inside one transaction, so a decision and the rows it rests on cannot drift
apart across processes. Nothing here imports the ledger: any object with these
methods will do, which is also how tests can watch the gate work. :class:`Known` is the
budgets as a gate last read them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ollama_meter.errors import UnreadableRow
from ollama_meter.records import Alert, Budget, LeaseKey, UnreadableBudget


class BudgetReads(Protocol):
    """Questions about spend and leases, answered inside one transaction."""

    def budgets(self, budget_ids: Collection[int]) -> dict[int, Budget]:
        """The budgets ``budget_ids`` as they are now, by id (one removed, or edited by hand so
        it cannot be read, is not there)."""
        ...

    def spent(self, budget: Budget, tenant: str, start: datetime, end: datetime) -> int:
        """Settled spend in ``budget``'s currency and scope for ``tenant`` in [start, end)."""
        ...

    def spend_by_scope(self, start: datetime, end: datetime) -> dict[tuple[str, str, str], int]:
        """Settled spend per (tenant, department, currency) in [start, end); the ledger's also
        has ``capped``, the keys whose sum is a lower bound (the rollups' cap, spans pruned)."""
        ...

    def clock(self, now: datetime) -> datetime:
        """The time leases are judged by, one clock for every process: the database server's
        where it has one (hosts' clocks disagree), else ``now``, this host's."""
        ...

    def held(
        self,
        key: LeaseKey,
        now: datetime,
        *,
        exclude: Collection[str] = (),
        over: tuple[datetime, datetime] | None = None,
    ) -> int:
        """What live leases hold for ``key`` at ``now``, a :meth:`clock` time (but the rows
        ``exclude``); with ``over`` (after, before), those of the key's budget and tenant
        keyed to any period start strictly between the two (``key``'s among them)."""
        ...

    def held_all(self, starts: Collection[datetime], now: datetime) -> dict[LeaseKey, int]:
        """:meth:`held` for every key of the periods that begin at ``starts`` with a live
        lease (a key with none is not there), in one query: a status of 1,000 budgets asked
        1,000 times."""
        ...

    def lease_rows(self, lease_ids: Collection[str]) -> set[str]:
        """Which of the lease rows ``lease_ids`` are in the ledger, live or expired (a client's
        per-call row not there was taken over by a gateway, or given back)."""
        ...

    def recorded(self, span_ids: Collection[str]) -> set[str]:
        """Which of ``span_ids`` are in the ledger: their costs are in :meth:`spent` from now
        on (a span and its rollups are committed together). Asked before it and after: on
        PostgreSQL each statement reads the ledger as it is then (``_leases.settled``)."""
        ...

    def refusals(self, starts: Collection[datetime]) -> dict[LeaseKey, int]:
        """The bound of the call each hard budget last refused for want of room (its latest
        ``refused`` alert), per budget, tenant and period, in the periods that begin at
        ``starts``."""
        ...


class BudgetWrites(BudgetReads, Protocol):
    """One write transaction: reads, plus locks, leases and alerts."""

    def lock(self, budget_ids: Sequence[int]) -> None:
        """Admission for these budgets waits for this transaction, in every process."""
        ...

    def put_lease(self, lease_id: str, key: LeaseKey, amount: int, expires_at: datetime) -> None:
        """Write (or overwrite) lease ``lease_id``: ``amount`` held for ``key`` until then
        (a :meth:`clock` time)."""
        ...

    def drop_lease(self, lease_id: str) -> None: ...

    def take_hold(self, hold: str, key: LeaseKey) -> int:
        """Drop the lease rows whose ids begin with ``hold`` (a client's per-call hold: its
        ``hold_id``) that hold money for ``key``, the call now held by this transaction's
        writer; what they held then."""
        ...

    def claim_alert(self, alert: Alert, fired_at: datetime) -> int | None:
        """Record ``alert`` unless its budget, tenant, period and threshold fired already."""
        ...


class AlertLog(Protocol):
    """Where alert deliveries are recorded."""

    def alerts(
        self,
        *,
        undelivered_only: bool = False,
        max_attempts: int | None = None,
        from_id: int = 0,
        limit: int | None = None,
    ) -> list[Alert]:
        """The alerts by id, from ``from_id`` on, at most ``limit`` of them."""
        ...

    def claim_alert_attempt(self, alert_id: int, seconds: float) -> Alert | None:
        """Count an attempt and hold the alert ``seconds``; it as it stands, or None when it
        is delivered or another process holds it."""
        ...

    def record_alert_delivery(
        self, alert_id: int, deliveries: dict[str, str], delivered: bool, *, final: bool = True
    ) -> None:
        """What the channels took so far; ``final`` ends the claim. Never undoes a delivery."""
        ...


class BudgetStore(AlertLog, Protocol):
    """Budgets and their transactions (the ledger is one)."""

    disposed: bool
    """Its owner closed it (shutdown): nothing in the background opens it again."""

    def budgets(self) -> list[Budget]: ...

    def readable_budgets(self) -> tuple[list[Budget], list[UnreadableBudget]]: ...

    def budgets_version(self) -> str | None:
        """What changes with every budget saved or removed: one short read."""
        ...

    def budget_transaction(self) -> AbstractContextManager[BudgetWrites]: ...

    def budget_snapshot(self) -> AbstractContextManager[BudgetReads]: ...


@dataclass(frozen=True)
class Known:
    """The budgets as read: those in force, and the rows edited by hand in SQL that cannot
    be read. Such a row binds the callers it may be meant for (its scope as stored), who are
    refused with its words; it spoils no other budget (every read of all of them failed: a
    server started before kept what it had, so a hard budget set later never bound it)."""

    budgets: list[Budget]
    unreadable: list[UnreadableBudget]

    def unreadable_for(self, tenant: str, department: str) -> UnreadableBudget | None:
        return next((u for u in self.unreadable if u.covers(tenant, department)), None)

    def covering(self, tenant: str, department: str) -> list[Budget]:
        if (broken := self.unreadable_for(tenant, department)) is not None:
            raise UnreadableRow(broken.problem)
        return [b for b in self.budgets if b.covers(tenant, department)]
