"""Whether this host's time zone data cuts the ledger's days as the data the ledger was cut with.

A zone's rules come from the host's tz database (the system's ``tzdata`` package, or the
``tzdata`` wheel), and versions differ: a country that moved or dropped daylight saving
time has new rules in a newer version only. Two gateways, or a gateway and a command, on
hosts with different versions cut the ledger's zone's midnights differently, so their day
and month rollup cells disagree, and reports by day, budgets and chargeback read both.

The ledger keeps a fingerprint of the rules it was cut with (``zone_rules`` in
``ledger_meta``): a digest of each year's UTC offset changes from :data:`FIRST_YEAR` to
:data:`LAST_YEAR`, set when its zone is set and when ``ometer db rollup`` has cut every day
again. A process whose data gives other rules says so once, when it opens the ledger,
naming the first year the two disagree, its own rules that year and what to do. Nothing
here reads a span.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

from sqlalchemy import Connection

from ollama_meter.ledger._meta import get_meta, ledger_zone, set_meta, zone_name

log = logging.getLogger("ollama_meter.ledger")

FIRST_YEAR, LAST_YEAR = 2000, 2050
"""The years compared: the ledger's spans and the budgets' periods to come; corrections of a
zone's history before 2000 (frequent in new tz data) cut no day of a ledger."""
_STEP_S = 2 * 86_400  # what hourly steps find, in every zone of the tz database (checked)
KEY = "zone_rules"


@lru_cache(maxsize=16)
def year_rules(zone: tzinfo) -> tuple[tuple[int, tuple[tuple[int, int], ...]], ...]:
    """Each year compared: the offset it begins with (seconds east of UTC), and its changes
    (seconds since 1970, the offset from then on)."""
    years = []
    for year in range(FIRST_YEAR, LAST_YEAR + 1):
        at = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
        end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
        begins = was = _offset(zone, at)
        changes = []
        while at < end:
            now = _offset(zone, min(at + _STEP_S, end - 1))
            if now != was:
                low, high = at, min(at + _STEP_S, end - 1)  # changed after low, by high
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (middle, high) if _offset(zone, middle) == was else (low, middle)
                changes.append((high, now))
                was = now
            at += _STEP_S
        years.append((begins, tuple(changes)))
    return tuple(years)


def zone_rules(zone: tzinfo) -> str:
    """The fingerprint kept: the first year, then three hex digits of a digest of each year's
    rules (ledger_meta's values are at most 255 characters)."""
    digits = "".join(
        hashlib.sha256(repr(rules).encode()).hexdigest()[:3] for rules in year_rules(zone)
    )
    return f"{FIRST_YEAR}:{digits}"


def _offset(zone: tzinfo, at: int) -> int:
    offset = datetime.fromtimestamp(at, zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


def record_zone_rules(conn: Connection) -> None:
    """Keep this process's rules of the ledger's zone as the ones its cells are cut with."""
    zone = ledger_zone(conn)
    set_meta(conn, KEY, None if zone is None else zone_rules(zone))


def zone_rules_differ(conn: Connection) -> str | None:
    """What to tell the user when this host's rules of the ledger's zone are not the ones
    the ledger was cut with; None when they are (or the ledger's zone is UTC). A ledger with
    a zone but no fingerprint (from before one was kept) has none to compare: the caller
    records this host's (:func:`record_zone_rules`)."""
    kept = get_meta(conn, KEY)
    zone = ledger_zone(conn)
    if kept is None or zone is None:
        return None
    ours = zone_rules(zone)
    if ours == kept:
        return None
    year = first_year_apart(ours, kept)
    return (
        f"this host's time zone data gives {zone_name(conn)} other rules than the ledger's "
        f"days were cut with, from {year} on (here: {_told(zone, year)}), so the day and month "
        "cells this process writes disagree with the other processes'. Update the zone data "
        "to the same, newest version on every host (the system's tzdata package, or pip "
        "install -U tzdata), restart the gateways, then run `ometer db rollup` once to cut "
        "every day again"
    )


def first_year_apart(ours: str, kept: str) -> int:
    """The first year whose rules the two fingerprints give differently; the first year
    compared when ``kept`` is none of ours (another window, a value edited by hand)."""
    first, _, mine = ours.partition(":")
    head, _, theirs = kept.partition(":")
    if head != first:
        return int(first)
    for n in range(0, len(mine), 3):
        if mine[n : n + 3] != theirs[n : n + 3]:
            return int(first) + n // 3
    return int(first)


def _told(zone: tzinfo, year: int) -> str:
    """This host's rules of ``zone`` in ``year``, as a person reads them."""
    begins, changes = year_rules(zone)[year - FIRST_YEAR]
    said = f"UTC{_hours(begins)} on 1 January"
    for at, offset in changes:
        said += f", UTC{_hours(offset)} from {datetime.fromtimestamp(at, UTC):%Y-%m-%d %H:%M} UTC"
    return said


def _hours(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
