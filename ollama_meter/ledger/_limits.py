"""Per-department limits in the ledger: stored so every gateway on one database shares them.

The record is :class:`ollama_meter.records.Limit`; the counting itself (requests
and tokens in the last minute, calls holding a slot) happens in each gateway.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ollama_meter.errors import ValidationError
from ollama_meter.ledger._stored import read_records, readable_records
from ollama_meter.ledger.models import LIMITS
from ollama_meter.records import Limit

_LIMITS: Table = LIMITS
_VALUES = ("rpm", "tpm", "concurrency", "weight")


def _where(tenant: str, department: str | None, key_id: int | None) -> list[Any]:
    c = _LIMITS.c
    if key_id is not None:
        return [c.key_id == key_id]
    return [c.tenant == tenant, c.department == (department or ""), c.key_id == 0]


def _to_limit(row: Any) -> Limit:
    return Limit(
        tenant=row.tenant,
        department=row.department or None,
        key_id=row.key_id or None,
        rpm=row.rpm,
        tpm=row.tpm,
        concurrency=row.concurrency,
        weight=row.weight,
        updated_at=row.updated_at,
    )


def set_limit(conn: Connection, limit: Limit) -> Limit:
    """Store ``limit``'s values for its scope; values it leaves None keep what was stored."""
    if problem := limit.problem():
        raise ValidationError(problem)
    now = datetime.now(UTC)
    where = _where(limit.tenant, limit.department, limit.key_id)
    found = conn.execute(select(_LIMITS).where(*where)).first()
    given = {name: value for name in _VALUES if (value := getattr(limit, name)) is not None}
    if found is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(_LIMITS).values(
                        tenant=limit.tenant,
                        department=limit.department or "",
                        key_id=limit.key_id or 0,
                        updated_at=now,
                        **{name: given.get(name) for name in _VALUES},
                    )
                )
            return replace(limit, updated_at=now)
        except IntegrityError:  # another process made the scope's row first: it is updated
            found = conn.execute(select(_LIMITS).where(*where)).one()
    conn.execute(update(_LIMITS).where(*where).values(updated_at=now, **given))
    return replace(_to_limit(found), updated_at=now, **given)


def copy_limits(conn: Connection, from_key: int, to_key: int) -> None:
    """Give key ``to_key`` the limits key ``from_key`` has (a key rotated keeps its limits)."""
    columns = [c for c in _LIMITS.c if c.name != "key_id"]
    rows = select(*columns, bindparam("to_key", to_key).label("key_id"))
    conn.execute(
        insert(_LIMITS).from_select(
            [*(c.name for c in columns), "key_id"], rows.where(_LIMITS.c.key_id == from_key)
        )
    )


def remove_limit(conn: Connection, tenant: str, department: str | None, key_id: int | None) -> bool:
    return conn.execute(delete(_LIMITS).where(*_where(tenant, department, key_id))).rowcount > 0


def list_limits(conn: Connection) -> list[Limit]:
    """Every limit; LedgerError naming the first row that cannot be read."""
    return read_records(conn, _LIMITS, _IN_ORDER, _checked, **_NAMED)


def limits_in_force(conn: Connection) -> tuple[list[Limit], list[tuple[Limit, str]]]:
    """Every limit that can be read, and the scope of each row that cannot with why: a
    gateway puts the others in force (one row edited by hand spoils no other scope)."""
    limits, broken = readable_records(conn, _LIMITS, _IN_ORDER, _checked, **_NAMED)
    return limits, [
        (Limit(key.tenant, key.department or None, key.key_id or None), why) for key, why in broken
    ]


_IN_ORDER = select(_LIMITS).order_by(_LIMITS.c.tenant, _LIMITS.c.key_id, _LIMITS.c.department)
_NAMED: dict[str, Any] = {
    "what": lambda row: (
        "the limits of "
        + (f"key {row.key_id}" if row.key_id else f"{row.tenant}/{row.department or '*'}")
    ),
    "fix": lambda row: "fix or delete the row in SQL (`ometer limit set` sets it right)",
}


def _checked(row: Any) -> Limit:
    """A row's limit, as ``ometer limit set`` would have stored it: one edited in SQL to a
    weight of 0 or an rpm of -5 (or of ``'abc'``: SQLite keeps it) was put in force."""
    for name in ("rpm", "tpm", "concurrency", "weight"):
        value = getattr(row, name)
        if value is not None and type(value) is not int:
            raise ValueError(f"{name} {value!r} is not a whole number")
    limit = _to_limit(row)
    if problem := limit.problem():
        raise ValueError(problem)
    return limit
