"""Budget alerts' rows in the ledger: claimed for delivery, their deliveries recorded, listed.
Portable SQL; callers own the transaction (the gate records an alert with
:meth:`~ollama_meter.ledger._budgets.BudgetTables.claim_alert`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select, update

from ollama_meter.ledger._budgets import ledger_now
from ollama_meter.ledger.models import BUDGET_ALERTS
from ollama_meter.records import Alert, record_from, values_of

_ALERTS: Table = BUDGET_ALERTS


def claim_attempt(conn: Connection, alert_id: int, now: datetime, until: datetime) -> Alert | None:
    """Count an attempt at ``alert_id``, claim it until ``until`` and return it as it now
    stands; None (and nothing changed) when it is delivered or another process's claim runs.

    One conditional UPDATE: of processes racing for the alert, exactly one changes the row.
    The row is read back under that claim, so what it says the channels took is what the
    claimer goes on from, never an earlier read. ``now`` and ``until`` are by the caller's
    clock; the claim is judged and written by the ledger's (:func:`ledger_now`).
    """
    at = ledger_now(conn, now)
    now, until = at, at + (until - now)
    a = _ALERTS.c
    claimed = conn.execute(
        update(_ALERTS)
        .where(
            a.id == alert_id,
            a.delivered == False,  # noqa: E712
            (a.claimed_until == None) | (a.claimed_until <= now),  # noqa: E711
        )
        .values(attempts=a.attempts + 1, claimed_until=until)
    )
    if claimed.rowcount != 1:
        return None
    return _to_alert(
        conn.execute(select(BUDGET_ALERTS).where(BUDGET_ALERTS.c.id == alert_id)).one()
    )


def record_delivery(
    conn: Connection, alert_id: int, deliveries: dict[str, str], delivered: bool, *, final: bool
) -> None:
    """Write what the channels took; ``final`` ends the claim. An alert recorded as delivered
    stays so: a claimer that outlived its claim (a suspended machine) cannot undo it."""
    values: dict[str, Any] = {"deliveries": deliveries, "delivered": delivered}
    if final:
        values["claimed_until"] = None
    conn.execute(
        update(_ALERTS)
        .where(_ALERTS.c.id == alert_id, _ALERTS.c.delivered == False)  # noqa: E712
        .values(**values)
    )


def alerts(
    conn: Connection,
    *,
    undelivered_only: bool = False,
    max_attempts: int | None = None,
    from_id: int = 0,
    limit: int | None = None,
) -> list[Alert]:
    """The alerts by id, from ``from_id`` on, at most ``limit`` of them."""
    query = select(BUDGET_ALERTS).where(BUDGET_ALERTS.c.id >= from_id).order_by(BUDGET_ALERTS.c.id)
    if limit is not None:
        query = query.limit(limit)
    if undelivered_only:
        query = query.where(BUDGET_ALERTS.c.delivered == False)  # noqa: E712
    if max_attempts is not None:
        query = query.where(BUDGET_ALERTS.c.attempts < max_attempts)
    return [_to_alert(row) for row in conn.execute(query)]


def _to_alert(row: Any) -> Alert:
    return record_from(
        Alert,
        row,
        spent=row.spent_micros,
        limit=row.limit_micros,
        deliveries=dict(row.deliveries or {}),
        call_bound=row.call_bound_micros,
    )


def alert_values(alert: Alert, fired_at: datetime) -> dict[str, Any]:
    """The row of ``alert`` (its id is the ledger's to give), fired at ``fired_at``."""
    return values_of(
        alert,
        skip=("id", "spent", "limit", "call_bound"),
        spent_micros=alert.spent,
        limit_micros=alert.limit,
        call_bound_micros=alert.call_bound,
        fired_at=fired_at,
        deliveries=dict(alert.deliveries),  # the log's, when the claimer says it (_thresholds.py)
        delivered=False,
        attempts=0,
    )
