"""Budgets and leases in the ledger (alerts' rows: :mod:`._alert_rows`). Portable SQL;
callers own the transaction.

:class:`BudgetTables` is what the budget gate works with inside one transaction
(see :meth:`Ledger.budget_transaction`): it answers the questions admission and
alerts ask, and writes their rows, so the gate decides and the ledger keeps SQL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from ollama_meter.ledger._budget_reads import HELD, HELD_ALL, HELD_BUT, RECORDED, REFUSALS, SAID
from ollama_meter.ledger._meta import get_meta, set_meta
from ollama_meter.ledger._stored import read_records, readable_records
from ollama_meter.ledger.models import BUDGET_ALERTS, BUDGET_RESERVATIONS, BUDGETS
from ollama_meter.records import (
    Alert,
    Budget,
    LeaseKey,
    UnreadableBudget,
    parse_thresholds,
    record_from,
    values_of,
)

if TYPE_CHECKING:
    from ollama_meter.ledger._aggregate import ScopeSpend

_BUDGETS: Table = BUDGETS
_RESERVATIONS: Table = BUDGET_RESERVATIONS
_ALERTS: Table = BUDGET_ALERTS


def _to_budget(row: Any) -> Budget:
    if type(row.limit_micros) is not int:  # SQLite keeps any text in an integer column
        raise ValueError(f"limit_micros {row.limit_micros!r} is not a whole number")
    thresholds = parse_thresholds(row.thresholds) if isinstance(row.thresholds, str) else ()
    return record_from(
        Budget, row, limit=row.limit_micros, thresholds=thresholds, set_at=row.created_at
    )


def _values(budget: Budget) -> dict[str, Any]:
    return values_of(
        budget,
        skip=("id", "limit", "thresholds", "set_at"),
        limit_micros=budget.limit,
        thresholds=",".join(str(t) for t in budget.thresholds),
    )


_NAMED: dict[str, Any] = {
    "what": lambda row: f"budget {row.id}",
    "fix": lambda row: f"fix the row in SQL, or remove it with `ometer budget rm {row.id}`",
}


GONE = "~"
"""What a removed budget's source begins with. Its row stays, in no list, with the lease rows
that hold its calls in flight: set again (scope, period, source and currency: the money they
hold is in it) it is the same budget, which counts them. Deleted, with its rows, a budget removed and set again while gateways held
leases on it admitted as many calls again beside those running (18 calls of 1 within a limit
of 10: tests/budgets/test_removed_holds.py)."""
_LIVE = ~BUDGETS.c.source.startswith(GONE, autoescape=True)


def list_budgets(conn: Connection) -> list[Budget]:
    query = select(BUDGETS).where(_LIVE).order_by(BUDGETS.c.id)
    return read_records(conn, _BUDGETS, query, _to_budget, **_NAMED)


def readable_budgets(conn: Connection) -> tuple[list[Budget], list[UnreadableBudget]]:
    """Every budget that can be read, and each row that cannot: its scope as stored, and why."""
    query = select(BUDGETS).where(_LIVE).order_by(BUDGETS.c.id)
    budgets, broken = readable_records(conn, _BUDGETS, query, _to_budget, **_NAMED)
    scope = select(cast(BUDGETS.c.tenant, Text), cast(BUDGETS.c.department, Text))
    unreadable = []
    for key, why in broken:  # in the same read: the rows just read
        tenant, department = conn.execute(scope.where(BUDGETS.c.id == key.id)).one()
        unreadable.append(UnreadableBudget(key.id, tenant, department, why))
    return budgets, unreadable


def budgets_version(conn: Connection) -> str | None:
    """What every save or removal of a budget changes: a gateway looks after each commit of
    its spans (one key's read), not only when it reads the budgets again every 5 s."""
    return get_meta(conn, "budgets_version")


def _new_version(conn: Connection) -> None:
    set_meta(conn, "budgets_version", secrets.token_hex(8))  # not a count: two at once differ


_TERMS = ("limit_micros", "currency", "hard", "thresholds")
"""What a budget holds its scope to: set again with others, it is in force since then."""


def save_budget(conn: Connection, budget: Budget) -> Budget:
    """Insert, or replace the budget with the same scope, period and source (one removed too,
    in the same currency: see :data:`GONE`)."""
    _new_version(conn)
    same = conn.execute(
        select(BUDGETS)
        .where(
            BUDGETS.c.tenant == budget.tenant,
            BUDGETS.c.department.is_(None)
            if budget.department is None
            else BUDGETS.c.department == budget.department,
            BUDGETS.c.period == budget.period,
            (BUDGETS.c.source == budget.source)
            | (
                (BUDGETS.c.source == GONE + budget.source) & (BUDGETS.c.currency == budget.currency)
            ),
        )
        .order_by(BUDGETS.c.source != budget.source)  # one in force first
    ).first()
    if same is not None:
        values = _values(budget)
        if same.source != budget.source or any(same._mapping[k] != values[k] for k in _TERMS):
            values["created_at"] = datetime.now(UTC)  # since when its terms hold
        conn.execute(update(_BUDGETS).where(_BUDGETS.c.id == same.id).values(values))
        return replace(budget, id=same.id)
    new = conn.execute(
        insert(_BUDGETS).values(**_values(budget), created_at=datetime.now(UTC))
    ).inserted_primary_key
    assert new is not None
    return replace(budget, id=int(new[0]))


def remove_budget(conn: Connection, budget_id: int) -> bool:
    """Take the budget out of force; its row stays as :data:`GONE` says, its leases expire."""
    _new_version(conn)
    gone = update(_BUDGETS).where(_BUDGETS.c.id == budget_id, _LIVE)
    marked = GONE + func.substr(_BUDGETS.c.source, 1, 15, type_=Text)  # 16 long: by hand
    return conn.execute(gone.values(source=marked)).rowcount > 0


def _identity(b: Budget) -> tuple[object, ...]:
    return (b.tenant, b.department or "", b.period, b.limit, b.currency, b.hard, b.thresholds)


def _from(conn: Connection, source: str) -> list[Budget]:
    return [b for b in list_budgets(conn) if b.source == source]


def source_differs(conn: Connection, source: str, budgets: Sequence[Budget]) -> bool:
    """Whether the budgets from ``source`` are other than ``budgets``."""
    return sorted(map(_identity, _from(conn, source))) != sorted(map(_identity, budgets))


def sync_source(conn: Connection, source: str, budgets: Sequence[Budget]) -> bool:
    """Make the budgets from ``source`` exactly ``budgets``; True when anything changed.

    A budget whose scope and period stay is updated in place, keeping its id: the leases
    of calls in flight and the alerts already fired hang on it. Recreated, every hold in
    every process would be dropped (and as many calls again admitted on top of those
    running), and each threshold reached this period would fire a second time.
    """
    if not source_differs(conn, source, budgets):
        return False
    kept = {_slot(b) for b in budgets}
    for old in _from(conn, source):
        assert old.id is not None
        if _slot(old) not in kept:
            remove_budget(conn, old.id)
    for budget in budgets:
        save_budget(conn, replace(budget, source=source))
    return True


def _slot(b: Budget) -> tuple[str, str, str]:
    """What :func:`save_budget` matches an existing budget of one source on."""
    return (b.tenant, b.department or "", b.period)


def spent(conn: Connection, budget: Budget, tenant: str, start: datetime, end: datetime) -> int:
    """Settled spend in the budget's currency for ``tenant`` (and its department) in [start, end).

    Read from rollups: a month is one cell per group plus the quarter hours at its
    edges, however many spans it holds.
    """
    from ollama_meter.ledger._aggregate import aggregate_spend
    from ollama_meter.ledger._spans import SpanFilter

    where = SpanFilter(since=start, until=end, tenant=tenant, department=budget.department)
    return sum(
        row.cost for row in aggregate_spend(conn, where, []) if row.currency == budget.currency
    )


_RENEW = (
    update(_RESERVATIONS)
    .where(
        _RESERVATIONS.c.id == bindparam("row_id"),
        _RESERVATIONS.c.budget_id == bindparam("row_budget"),
    )
    .values(
        tenant=bindparam("tenant"),
        period_start=bindparam("period_start"),
        amount_micros=bindparam("amount_micros"),
        expires_at=bindparam("expires_at"),
    )
)
_PURGE = delete(_RESERVATIONS).where(_RESERVATIONS.c.expires_at <= bindparam("before"))
_LEASE_ROWS = select(_RESERVATIONS.c.id).where(
    _RESERVATIONS.c.id.in_(bindparam("ids", expanding=True))
)
"""The statements a lease keeper's round sends, built once: building them again for each row
cost more CPU than the database took to run them (tests/budgets/test_gate_model.py)."""


def put_reservation(conn: Connection, row: dict[str, Any]) -> None:
    """Write a lease row, replacing the one with the same id and budget: a renewal updates it
    in place (one statement; a gateway's lease keeper renews every few minutes while calls
    run), a row not there (its first write, or gone meanwhile) is inserted."""
    renewed = conn.execute(_RENEW, {**row, "row_id": row["id"], "row_budget": row["budget_id"]})
    if renewed.rowcount == 0:
        conn.execute(insert(_RESERVATIONS).values(**row))


def drop_reservations(conn: Connection, lease_ids: Sequence[str]) -> None:
    """Remove the lease rows ``lease_ids`` (a dead process's: nothing renews them)."""
    for at in range(0, len(lease_ids), _IDS_A_QUERY):
        ids = lease_ids[at : at + _IDS_A_QUERY]
        conn.execute(delete(_RESERVATIONS).where(_RESERVATIONS.c.id.in_(ids)))


def add_reservations(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(_RESERVATIONS), list(rows))


_IDS_A_QUERY = 500
"""Span ids asked about in one query (SQLite allows 32,766 parameters, older builds 999)."""

FORGET_EXPIRED = timedelta(days=1)
"""How long past its end a lease row a killed process left is kept (for whoever looks)."""


def ledger_now(conn: Connection, now: datetime) -> datetime:
    """The instant leases and alert claims are written and judged at: one clock for all.

    On PostgreSQL, the server's (``clock_timestamp()``, read when asked: not when a transaction
    that waited for a lock began). Gateways on several hosts share that ledger, and their
    clocks disagree by minutes, or step (NTP after a suspend, a VM resumed): each judging the
    others' rows by its own clock saw a live lease as expired (and admitted past a hard limit)
    or a killed process's as alive for as long as that host's clock ran ahead. SQLite is a
    file on one host, whose processes share one clock: there it is ``now``, the caller's.
    """
    if conn.dialect.name == "postgresql":
        server: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return server.astimezone(UTC)
    return now


def ledger_seconds(conn: Connection, clock: Callable[[], float] = time.time) -> int:
    """Whole seconds since 1970 by the ledger's clock (:func:`ledger_now`); ``clock`` is
    this host's: for a mark that processes on other hosts judge by their own reading."""
    return int(ledger_now(conn, datetime.fromtimestamp(clock(), UTC)).timestamp())


def purge_expired(conn: Connection, now: datetime) -> int:
    return conn.execute(_PURGE, {"before": now}).rowcount


class BudgetTables:
    """The budget tables inside one transaction: what the gate reads and writes there."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def lock(self, budget_ids: Sequence[int]) -> None:
        """Serialise admission per budget across processes until the transaction ends.

        SQLite already holds its write lock; PostgreSQL takes an advisory lock per budget.
        """
        if self._conn.dialect.name == "postgresql":
            for budget_id in sorted(budget_ids):
                self._conn.execute(
                    text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": 0x6F6D, "b": budget_id}
                )

    def budgets(self, budget_ids: Collection[int]) -> dict[int, Budget]:
        query = select(BUDGETS).where(BUDGETS.c.id.in_(sorted(budget_ids)), _LIVE)
        found, _ = readable_records(self._conn, _BUDGETS, query, _to_budget, **_NAMED)
        return {b.id: b for b in found if b.id is not None}

    def spent(self, budget: Budget, tenant: str, start: datetime, end: datetime) -> int:
        return spent(self._conn, budget, tenant, start, end)

    def spend_by_scope(self, start: datetime, end: datetime) -> ScopeSpend:
        from ollama_meter.ledger._aggregate import spend_by_scope

        return spend_by_scope(self._conn, start, end)

    def clock(self, now: datetime) -> datetime:
        """The ledger's time (see :func:`ledger_now`): what ``held`` and ``put_lease`` take."""
        return ledger_now(self._conn, now)

    def held(
        self,
        key: LeaseKey,
        now: datetime,
        *,
        exclude: Collection[str] = (),
        over: tuple[datetime, datetime] | None = None,
    ) -> int:
        us = timedelta(microseconds=1)  # ``over``: any start strictly between; else the key's
        since, until = (
            (over[0] + us, over[1]) if over else (key.period_start, key.period_start + us)
        )
        row = {"budget_id": key.budget_id, "tenant": key.tenant, "since": since, "until": until}
        if not exclude:
            return int(self._conn.execute(HELD, {**row, "now": now}).scalar_one())
        but = {**row, "now": now, "exclude": sorted(exclude)}
        return int(self._conn.execute(HELD_BUT, but).scalar_one())

    def held_all(self, starts: Collection[datetime], now: datetime) -> dict[LeaseKey, int]:
        rows = self._conn.execute(HELD_ALL, {"starts": sorted(set(starts)), "now": now})
        return {LeaseKey(b, t, s): int(n or 0) for b, t, s, n in rows}

    def lease_rows(self, lease_ids: Collection[str]) -> set[str]:
        found: set[str] = set()
        ids = sorted(lease_ids)
        for start in range(0, len(ids), _IDS_A_QUERY):
            chunk = ids[start : start + _IDS_A_QUERY]
            found.update(self._conn.execute(_LEASE_ROWS, {"ids": chunk}).scalars())
        return found

    def recorded(self, span_ids: Collection[str]) -> set[str]:
        found: set[str] = set()
        ids = sorted(span_ids)
        for start in range(0, len(ids), _IDS_A_QUERY):
            chunk = ids[start : start + _IDS_A_QUERY]
            found.update(self._conn.execute(RECORDED, {"ids": chunk}).scalars())
        return found

    def refusals(self, starts: Collection[datetime]) -> dict[LeaseKey, int]:
        rows = self._conn.execute(REFUSALS, {"starts": sorted(set(starts))})
        return {LeaseKey(b, t, s): bound or 0 for b, t, s, bound in rows}

    def put_lease(self, lease_id: str, key: LeaseKey, amount: int, expires_at: datetime) -> None:
        # Rows a killed process left (nobody gives them back) go once a day has passed
        # their end: each counted as held only until then, but they stayed for good.
        purge_expired(self._conn, expires_at - FORGET_EXPIRED)
        put_reservation(
            self._conn,
            {
                "id": lease_id,
                "budget_id": key.budget_id,
                "tenant": key.tenant,
                "period_start": key.period_start,
                "amount_micros": amount,
                "expires_at": expires_at,
            },
        )

    def drop_lease(self, lease_id: str) -> None:
        self._conn.execute(delete(_RESERVATIONS).where(_RESERVATIONS.c.id == lease_id))

    def take_hold(self, hold: str, key: LeaseKey) -> int:
        r = _RESERVATIONS.c
        held = (
            r.id.startswith(hold, autoescape=True),
            r.budget_id == key.budget_id,
            r.tenant == key.tenant,
            r.period_start == key.period_start,
        )
        amount = self._conn.execute(select(func.sum(r.amount_micros)).where(*held)).scalar()
        self._conn.execute(delete(_RESERVATIONS).where(*held))
        return int(amount or 0)

    def claim_alert(self, alert: Alert, fired_at: datetime) -> int | None:
        """Record ``alert`` (its id is ignored) unless it fired already (its kind, at its
        threshold, in its budget, tenant and period; a refusal: under its limit); the new id.

        The unique constraint decides, so across processes exactly one caller gets an id.
        """
        from ollama_meter.ledger._alert_rows import alert_values

        values = alert_values(alert, fired_at)
        try:
            with self._conn.begin_nested() as claim:
                new = self._conn.execute(insert(_ALERTS).values(**values)).inserted_primary_key
                if self._conn.execute(SAID, values).first() is not None:  # before a zone moved
                    claim.rollback()  # asked only of a new claim: a start's sweep, once each
                    return None
        except IntegrityError:
            return self._rearm(alert, fired_at) if alert.kind == "refused" else None
        assert new is not None
        return int(new[0])

    def _rearm(self, alert: Alert, fired_at: datetime) -> int | None:
        """A refusal recorded under another limit (the admin changed it since, as the alert
        told them): news, so it replaces the row, with a new id (a delivery of the old one
        still queued finds no row, never this one's); None when the row is this limit's."""
        c = _ALERTS.c
        top = self._conn.execute(select(func.max(c.id))).scalar() or 0
        gone = self._conn.execute(
            delete(_ALERTS).where(
                c.budget_id == alert.budget_id,
                c.tenant == alert.tenant,
                c.period_start == alert.period_start,
                c.kind == alert.kind,
                c.threshold == alert.threshold,
                c.limit_micros != alert.limit,  # of processes racing, one deletes it
            )
        )
        if gone.rowcount != 1:
            return None
        from ollama_meter.ledger._alert_rows import alert_values

        values = alert_values(alert, fired_at)
        if self._conn.dialect.name != "postgresql":  # SQLite gives a deleted last row's id again
            values["id"] = top + 1  # (its write lock is held: no other process takes it)
        try:
            with self._conn.begin_nested():
                new = self._conn.execute(insert(_ALERTS).values(**values)).inserted_primary_key
        except IntegrityError:  # another process replaced it first
            return None
        assert new is not None
        return int(new[0])
