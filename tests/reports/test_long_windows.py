"""A window of centuries reads the days that hold calls: the same rows, not millions of buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.ledger import Ledger, prune
from ollama_meter.periods import parse_period, window_between
from ollama_meter.reports import perf_report, spend_report
from ollama_meter.reports._spend import held_buckets
from tests.factories import make_span

NOW = datetime(2026, 12, 15, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns"])
def test_a_window_of_centuries_gives_the_rows_of_the_data_it_holds(
    sqlite_url: str, zone: str
) -> None:
    tz = ZoneInfo(zone)
    ledger = Ledger(sqlite_url, zone="UTC")
    first = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # a DST night in Europe
    ledger.record(
        [make_span(started_at=first + timedelta(hours=7 * i), cost_total=i) for i in range(300)]
    )
    prune(ledger, 30, now=NOW)  # the oldest calls are in the rollups only
    everything = window_between("1970-01-01", "9998-12-31", tz=tz, now=NOW)
    data = window_between("2026-03-01", "2026-06-30", tz=tz, now=NOW)
    for unit in ("day", "week", "month"):
        wide = spend_report(ledger, everything, ["department", unit], tz=tz)
        # What is planned, bucketed and read: the buckets of calls, and at each end one
        # that a day (or month) of the ledger's zone, which has calls, reaches into.
        built = held_buckets(ledger, everything, unit, tz)
        assert len(built) <= len({row.label(unit) for row in wide.rows}) + 2
        assert wide.rows == spend_report(ledger, data, ["department", unit], tz=tz).rows
        assert sum(r.requests for r in wide.rows) == 300
        assert sum(r.cost for r in wide.rows) == sum(range(300))
    perf = perf_report(ledger, everything, ["model"], unit="week", tz=tz)
    assert perf.rows == perf_report(ledger, data, ["model"], unit="week", tz=tz).rows
    nothing = parse_period("1999-01", tz=tz, now=NOW)
    assert (
        spend_report(
            ledger, window_between("1970-01-01", "2025-12-31", tz=tz, now=NOW), ["day"], tz=tz
        ).rows
        == []
    )
    assert spend_report(ledger, nothing, ["day"], tz=tz).rows == []
    empty = Ledger(sqlite_url.replace(".db", "-empty.db"))
    assert spend_report(empty, everything, ["day"], tz=tz).rows == []
