"""A report over any window of days, in any zone, from rollups cut in any zone, is the report
raw spans give: near DST changes, 30-minute DST (Lord Howe), +14 and -12, quarter-hour
offsets (Kathmandu +5:45, Eucla +8:45), old odd offsets (Monrovia -0:44:30, Kiritimati
-10:40 until 1979), a skipped day (Apia) and midnights that came twice (St John's)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter._names import zone_problem
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.periods import window_between
from ollama_meter.records import SpanRecord
from ollama_meter.reports import chargeback, perf_report, spend_report
from tests.factories import make_span, opened
from tests.ledger.test_rollups import _fill

NAMED = [
    "UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Kiritimati",
    "Etc/GMT+12", "Asia/Kathmandu", "Australia/Eucla", "Pacific/Chatham", "Pacific/Apia",
    "America/St_Johns", "America/Havana", "America/Santiago", "Africa/Monrovia",
]  # fmt: skip
# Every zone this host lists that ometer takes: not "localtime" or "Factory", which it refuses
# with a clear error (tests/test_config.py); drawn once in 599, CI hit "localtime".
ANY_ZONE = st.sampled_from(NAMED) | st.sampled_from(
    sorted(zone for zone in available_timezones() if zone_problem(zone) is None)
)
ANCHORS = [
    datetime(2026, 11, 1, 6, tzinfo=UTC),  # New York, Havana back
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # Europe forward
    datetime(2026, 10, 3, 16, tzinfo=UTC),  # Lord Howe forward half an hour
    datetime(2026, 9, 6, 4, tzinfo=UTC),  # Santiago forward at midnight
    datetime(1987, 10, 25, 3, tzinfo=UTC),  # St John's back across midnight
    datetime(2011, 12, 30, 10, tzinfo=UTC),  # Apia skips a day
    datetime(1971, 6, 1, tzinfo=UTC),  # Monrovia -0:44:30, Kiritimati -10:40
    datetime(1979, 10, 1, 10, tzinfo=UTC),  # Kiritimati to +14
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # Europe back
    datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe back half an hour
    datetime(2024, 2, 29, 12, tzinfo=UTC),  # a leap day
    datetime(2020, 12, 31, 12, tzinfo=UTC),  # a year's end inside ISO week 53
]
NOW = datetime(2027, 1, 1, tzinfo=UTC)


@st.composite
def spans_near(draw: st.DrawFn, anchor: datetime) -> list[SpanRecord]:
    quarter = 15 * 60 * 10**6
    out = []
    for _ in range(draw(st.integers(1, 25))):
        # on a quarter hour (a cell's edge), a microsecond either side of one, or anywhere
        us = draw(st.integers(-4 * 96, 4 * 96)) * quarter + draw(
            st.sampled_from([0, -1, 1]) | st.integers(0, quarter - 1)
        )
        started = anchor + timedelta(microseconds=us)
        out.append(
            make_span(
                started_at=started,
                ended_at=started + timedelta(microseconds=draw(st.integers(0, 7_200 * 10**6))),
                department=draw(st.sampled_from(["sales", "ops"])),
                upstream_host=draw(st.sampled_from(["http://gpu1:11434", "http://gpu2:11434"])),
                cost_total=draw(st.integers(0, 10**6)),
                latency_ns=draw(st.none() | st.integers(0, 10**10)),
                ttft_ns=draw(st.none() | st.integers(0, 10**10)),
                prompt_eval_duration_ns=draw(st.none() | st.integers(0, 10**10)),
                eval_duration_ns=draw(st.none() | st.integers(0, 10**10)),
            )
        )
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    anchor=st.sampled_from(ANCHORS),
    zone=ANY_ZONE,
    cells=ANY_ZONE,
    first=st.integers(-5, 5),
    days=st.integers(0, 9),
    unit=st.sampled_from([None, "day", "week", "month"]),
)
def test_any_window_in_any_zone_from_rollups_is_the_raw_report_perf_and_bill(
    db_url: str,
    data: st.DataObject,
    anchor: datetime,
    zone: str,
    cells: str,
    first: int,
    days: int,
    unit: str | None,
) -> None:
    spans = data.draw(spans_near(anchor))
    with opened(db_url) as ledger:
        _fill(ledger, [spans], ZoneInfo(cells))
        tz = ZoneInfo(zone)
        since = anchor.astimezone(tz).date() + timedelta(days=first)
        until = since + timedelta(days=days)
        window = window_between(str(since), str(until), tz=tz, now=NOW)
        by = ["department", unit] if unit else ["department"]
        report = spend_report(ledger, window, by, tz=tz)
        with raw_spans():
            expected = spend_report(ledger, window, by, tz=tz)
        assert report.rows == expected.rows
        perf = perf_report(ledger, window, ["model"], unit=unit, tz=tz)
        with raw_spans():
            assert perf.rows == perf_report(ledger, window, ["model"], unit=unit, tz=tz).rows
        month = since.strftime("%Y-%m")
        options: dict[str, Any] = {
            "tz": tz,
            "now": NOW,
            "currency": "USD",
            "fixed_cost": Decimal(100),
        }
        bill = chargeback(ledger, month, **options)
        with raw_spans():
            expected = chargeback(ledger, month, **options)
        assert (bill.rows, bill.busy_ns) == (expected.rows, expected.busy_ns)
        inside = [s for s in spans if window.start <= s.started_at < window.end]
        assert sum(row.requests for row in report.rows) == len(inside)
        assert sum(int(row.cost) for row in report.rows) == sum(s.cost_total for s in inside)


def test_since_and_until_are_whole_local_days_across_a_dst_change() -> None:
    """--since/--until take dates: a day is 23 or 25 hours where the clock changes."""
    berlin = ZoneInfo("Europe/Berlin")
    short = window_between("2026-03-29", "2026-03-29", tz=berlin, now=NOW)
    long = window_between("2026-10-25", "2026-10-25", tz=berlin, now=NOW)
    assert (short.end - short.start, long.end - long.start) == (
        timedelta(hours=23),
        timedelta(hours=25),
    )
    assert date(2026, 3, 29) == short.start.astimezone(berlin).date()
