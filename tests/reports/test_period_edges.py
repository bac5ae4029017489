"""Every span lands in exactly one day, week and month of the report's zone, the one its
local clock says, also where that clock jumps: DST at 02:00 (Berlin, New York), half-hour
and 45-minute offsets and DST (Kathmandu, Lord Howe, Chatham), a day skipped (Apia, 30
December 2011), a 27-hour day (Casey); and spans exactly on a period's edge. Rollups cut in
another zone give what raw spans give."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.periods import (
    EARLIEST,
    LAST_DAY,
    Window,
    day_of,
    next_month,
    parse_period,
    window_between,
)
from ollama_meter.records import SpanRecord
from ollama_meter.reports import spend_report
from tests.factories import make_span, opened
from tests.ledger.test_rollups import _fill

JUMPS = {
    "Europe/Berlin": [date(2026, 3, 29), date(2026, 10, 25)],
    "America/New_York": [date(2026, 3, 8), date(2026, 11, 1)],
    "Asia/Kathmandu": [date(2026, 2, 1), date(2024, 2, 29), date(2020, 12, 31)],
    "America/St_Johns": [date(2026, 3, 8), date(2026, 11, 1)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],
    "Pacific/Chatham": [date(2026, 4, 5), date(2026, 9, 27)],
    "Pacific/Apia": [date(2011, 12, 30)],
    "Antarctica/Casey": [date(2023, 3, 9)],
}
"""Zones, and local days their clocks jump on (Kathmandu: none, +5:45 all year: its days
are a leap day and a year's end inside ISO week 53)."""
NOW = datetime(2027, 1, 1, tzinfo=UTC)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC)


@st.composite
def spans_near(draw: st.DrawFn, zone: ZoneInfo, jump: date) -> list[SpanRecord]:
    """Spans within days of ``jump``: on local midnights, a microsecond before one, on the
    first of the month, or anywhere in between."""
    spans = []
    for _ in range(draw(st.integers(1, 12))):
        day = jump + timedelta(days=draw(st.integers(-3, 3)))
        edge = draw(st.sampled_from(["midnight", "before", "month", "month_before", "any"]))
        if edge.startswith("month"):
            day = day.replace(day=1) if draw(st.booleans()) else next_month(day)
        at = _midnight(day, zone)
        if edge.endswith("before"):
            at -= timedelta(microseconds=1)
        elif edge == "any":
            at += timedelta(microseconds=draw(st.integers(0, 2 * 86_400 * 10**6)))
        spans.append(
            make_span(
                started_at=at,
                department=draw(st.sampled_from(["sales", "ops"])),
                cost_total=draw(st.integers(0, 10**6)),
            )
        )
    return spans


@st.composite
def cases(draw: st.DrawFn) -> tuple[ZoneInfo, date, list[SpanRecord]]:
    name = draw(st.sampled_from(sorted(JUMPS)))
    jump = draw(st.sampled_from(JUMPS[name]))
    zone = ZoneInfo(name)
    return zone, jump, draw(spans_near(zone, jump))


def _label(moment: datetime, zone: ZoneInfo, unit: str) -> str:
    local = moment.astimezone(zone).date()
    if unit == "day":
        return local.isoformat()
    if unit == "month":
        return local.strftime("%Y-%m")
    iso = local.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _window(zone: ZoneInfo, jump: date) -> Window:
    """From two months before the jump's to two after: every span drawn is inside it."""
    first = parse_period((jump - timedelta(days=40)).strftime("%Y-%m"), tz=zone, now=NOW)
    last = parse_period((jump + timedelta(days=40)).strftime("%Y-%m"), tz=zone, now=NOW)
    return Window(first.start, last.end, "five months")


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases(), cells=st.sampled_from([None, *sorted(JUMPS)]))
def test_each_span_is_in_the_one_period_its_local_clock_says(
    db_url: str, case: tuple[ZoneInfo, date, list[SpanRecord]], cells: str | None
) -> None:
    zone, jump, spans = case
    with opened(db_url) as ledger:
        _fill(ledger, [spans], ZoneInfo(cells or "UTC"))
        window = _window(zone, jump)
        assert all(window.start <= s.started_at < window.end for s in spans)
        for unit in ("day", "week", "month"):
            report = spend_report(ledger, window, [unit], tz=zone)
            got = Counter({row.label(unit): row.requests for row in report.rows})
            assert got == Counter(_label(s.started_at, zone, unit) for s in spans), unit
            cost = {row.label(unit): int(row.cost) for row in report.rows}
            assert sum(cost.values()) == sum(s.cost_total for s in spans)
            with raw_spans():
                raw = spend_report(ledger, window, [unit], tz=zone)
            assert raw.rows == report.rows
        # each month on its own, as `report --period YYYY-MM` and chargeback read it
        months = {_label(s.started_at, zone, "month") for s in spans}
        for month in months:
            rows = spend_report(ledger, parse_period(month, tz=zone, now=NOW), [], tz=zone).rows
            assert sum(r.requests for r in rows) == sum(
                _label(s.started_at, zone, "month") == month for s in spans
            )


def test_a_report_from_the_start_holds_the_first_hours_of_1970_in_new_york(db_url: str) -> None:
    """A clock that booted at the epoch wrote calls at 1970-01-01 02:00 UTC: 31 December 1969
    in New York, before any day a period can name. A report with no ``--since`` missed them."""
    from ollama_meter.reports import window_between

    tz = ZoneInfo("America/New_York")
    ledger = Ledger(db_url, zone="America/New_York")
    early = make_span(started_at=datetime(1970, 1, 1, 2, tzinfo=UTC), cost_total=1_000)
    ledger.record([early, make_span(started_at=datetime(2026, 11, 1, 2, tzinfo=UTC))])
    window = window_between(None, None, tz=tz, now=datetime(2026, 12, 1, tzinfo=UTC))
    [by_month, *_] = spend_report(ledger, window, ["month"], tz=tz).rows
    assert (by_month.label("month"), by_month.requests, by_month.cost) == ("1969-12", 1, 1_000)


FAR_ZONES = ("UTC", "America/New_York", "America/Los_Angeles", "Etc/GMT+12", "Etc/GMT-14",
             "Pacific/Kiritimati", "Asia/Kathmandu", "Australia/Lord_Howe")  # fmt: skip
LATEST = datetime.combine(LAST_DAY + timedelta(days=1), time.min, UTC)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(FAR_ZONES),
    hours=st.integers(0, 15 * 3600 * 10**6),
    at_end=st.booleans(),
)
def test_every_instant_a_span_may_start_at_is_in_a_day_and_month_a_period_can_name(
    zone: str, hours: int, at_end: bool
) -> None:
    """A clock that booted at the epoch wrote calls at 1970-01-01 02:00 UTC: 31 December 1969
    in New York, which ``report --by month`` shows as 1969-12. ``chargeback --month 1969-12``,
    ``report --period 1969-12`` and ``--since 1969-12-31`` were refused as "outside the
    dates ometer works with", and 1970-01 begins at 05:00 UTC there: those calls were in no
    bill, and ``reprice --since`` could not reach them. A period is refused only when it
    holds no instant a span may start at, in the zone it is cut in."""
    tz = ZoneInfo(zone)
    moment = (
        LATEST - timedelta(microseconds=1 + hours)
        if at_end
        else EARLIEST + timedelta(microseconds=hours)
    )
    day = day_of(moment, tz)
    month = parse_period(f"{day:%Y-%m}", tz=tz, now=NOW, what="--month")
    assert month.start <= moment < month.end
    daily = window_between(day.isoformat(), day.isoformat(), tz=tz, now=LATEST)
    assert daily.start <= moment < daily.end
    assert parse_period(day.isoformat(), tz=tz, now=NOW) == Window(
        daily.start, daily.end, day.isoformat()
    )


@pytest.mark.parametrize(
    ("zone", "month"),
    [("UTC", "1969-12"), ("Etc/GMT-14", "1969-12"), ("UTC", "9999-01"), ("Etc/GMT+12", "9999-01")],
)
def test_a_month_that_holds_no_instant_a_span_may_start_at_is_still_refused(
    zone: str, month: str
) -> None:
    with pytest.raises(ValidationError, match="outside the dates ometer works with"):
        parse_period(month, tz=ZoneInfo(zone), now=NOW, what="--month")


def test_calls_of_the_epoch_west_of_utc_are_billed_and_repriced(
    cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hours of 1970 in New York's 1969-12: billed there, and a reprice from that
    day reaches them."""
    ledger = Ledger(db_url, zone="America/New_York")
    early = make_span(started_at=datetime(1970, 1, 1, 2, tzinfo=UTC), cost_total=1_000)
    ledger.record([early])
    monkeypatch.setenv("OMETER_TIMEZONE", "America/New_York")
    bill = cli("chargeback", "--month", "1969-12", "--fixed-cost", "10", "--db", db_url)
    assert bill.code == 0, bill.stderr
    [_, row] = list(csv.reader(io.StringIO(bill.stdout)))
    assert row[:4] == ["1969-12", early.tenant, early.department, "1"]
    assert row[-4:] == ["0.001000", "10.00", "10.001000", "USD"]
    repriced = cli("reprice", "--since", "1969-12-31", "--db", db_url)
    assert repriced.code == 0, repriced.stderr
    assert repriced.stdout.startswith("examined 1 span(s) since 1969-12-31;")
