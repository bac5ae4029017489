"""A ledger's zone: the midnights its day and month rollups begin at (``db rollup --zone``
moves them; a new ledger adopts the first zone it is opened with). Moving them marks the
rollups stale for :mod:`._rebuild` to cut again; nothing here reads or writes a span."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from ollama_meter._names import zone_problem
from ollama_meter.errors import ValidationError
from ollama_meter.ledger._cells import Grain, floor_cell, next_cell
from ollama_meter.ledger._meta import get_meta, ledger_zone, pruned_before, set_meta, zone_name
from ollama_meter.ledger._rollup import BUSY_CELLS, HISTOGRAMS, ROLLUPS, lock_cells
from ollama_meter.ledger._types import from_us
from ollama_meter.ledger._zonerules import record_zone_rules


def zone_key(zone: str) -> str:
    """The IANA key of ``zone``; a clear error for a name that is none."""
    if problem := zone_problem(zone):
        raise ValidationError(problem)
    return ZoneInfo(zone).key


def change_zone(write: Callable[[], Any], zone: str) -> None:
    key = zone_key(zone)
    with write() as conn:
        # The horizon read in the write that marks the cells stale, under the rollups' lock:
        # a prune records its horizon holding it alone once it saw no stale mark, so the two
        # see each other (a prune landing between a read and this write removed days that
        # could no longer be cut again).
        lock_cells(conn)
        if zone_name(conn) == key:
            return
        if _cut_alike(conn, ledger_zone(conn), ZoneInfo(key)):
            set_meta(conn, "zone", key)  # another name (Etc/UTC for UTC): nothing to cut again
            record_zone_rules(conn)
            return
        if (horizon := pruned_before(conn)) is not None:
            raise ValidationError(
                f"raw spans before {from_us(horizon):%Y-%m-%d %H:%M} UTC were pruned: their day "
                f"and month rollups cannot be cut again at {key}'s midnight; keep the ledger's zone"
            )
        set_meta(conn, "zone", key)
        record_zone_rules(conn)
        # Until every day is cut again, cells of both zones are mixed and reports read
        # nothing for the days not yet redone: if the rebuild dies, whichever process
        # opens the ledger next finishes it (build_if_stale).
        set_meta(conn, "rollups", "stale")


def _cut_alike(conn: Connection, old: tzinfo | None, new: tzinfo) -> bool:
    """Whether every day and month cell the ledger holds is one of ``new``'s too (from and
    to its midnights): ``Etc/UTC`` for ``UTC``, ``Asia/Calcutta`` for ``Asia/Kolkata``, or a
    zone whose clock agreed on every day so far. Then its rollups are already the new zone's,
    pruned days too; a zone change refused them on a pruned ledger, or rebuilt them all."""
    cells = {
        (int(grain), int(start) * 10**6)  # stored in seconds
        for table in (ROLLUPS, HISTOGRAMS, BUSY_CELLS)
        for grain, start in conn.execute(
            select(table.c.grain, table.c.start)
            .where(table.c.grain > int(Grain.QUARTER))
            .distinct()
        )
    }
    return all(
        floor_cell(Grain(grain), start, new) == start
        and next_cell(Grain(grain), start, new) == next_cell(Grain(grain), start, old)
        for grain, start in cells
    )


def can_adopt_zone(conn: Connection) -> bool:
    """Whether the ledger has no zone set and no rollups that a zone would have cut."""
    if get_meta(conn, "zone") is not None:
        return False
    return conn.execute(select(ROLLUPS.c.start).limit(1)).first() is None


def adopt_zone(conn: Connection, zone: str) -> bool:
    """Set the ledger's zone if :func:`can_adopt_zone` (checked again, in this write)."""
    if not can_adopt_zone(conn):
        return False
    set_meta(conn, "zone", zone_key(zone))
    record_zone_rules(conn)
    return True
