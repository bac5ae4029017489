"""Windows and buckets cut at local midnight, DST included."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, strategies as st

from ollama_meter.errors import ValidationError
from ollama_meter.periods import parse_day
from ollama_meter.reports import bucket_bounds, parse_period, window_between

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("text", "start", "end", "label"),
    [
        (
            "today",
            datetime(2026, 11, 25, 23, tzinfo=UTC),
            datetime(2026, 11, 26, 23, tzinfo=UTC),
            "2026-11-26",
        ),
        (
            "week",
            datetime(2026, 11, 22, 23, tzinfo=UTC),
            datetime(2026, 11, 29, 23, tzinfo=UTC),
            "2026-W48",
        ),
        (
            "month",
            datetime(2026, 10, 31, 23, tzinfo=UTC),
            datetime(2026, 11, 30, 23, tzinfo=UTC),
            "2026-11",
        ),
        (
            "2026-03",
            datetime(2026, 2, 28, 23, tzinfo=UTC),
            datetime(2026, 3, 31, 22, tzinfo=UTC),
            "2026-03",
        ),
        (
            "2026-12",
            datetime(2026, 11, 30, 23, tzinfo=UTC),
            datetime(2026, 12, 31, 23, tzinfo=UTC),
            "2026-12",
        ),
        (
            "2026-03-29",
            datetime(2026, 3, 28, 23, tzinfo=UTC),
            datetime(2026, 3, 29, 22, tzinfo=UTC),
            "2026-03-29",
        ),
    ],
)
def test_periods_in_berlin(text: str, start: datetime, end: datetime, label: str) -> None:
    window = parse_period(text, tz=BERLIN, now=NOW)
    assert (window.start, window.end, window.label) == (start, end, label)


@pytest.mark.parametrize("text", ["yesterday", "2026-13", "2026-02-30", "26-11"])
def test_bad_periods(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_period(text, tz=BERLIN, now=NOW)


@given(
    st.text(
        alphabet=st.characters(categories=["Nd"]) | st.sampled_from("0123456789-0123456789WT: "),
        max_size=12,
    )
)
@example("20261101")  # ISO basic format
@example("2026W481")  # the Monday of ISO week 48
@example("2026-W48-1")
@example("２０２６-１１-０１")
def test_a_day_is_written_yyyy_mm_dd_and_nothing_else(text: str) -> None:
    """date.fromisoformat() takes more than --help says (YYYY-MM-DD); what is taken is
    exactly the day that is written."""
    try:
        day = parse_day(text, what="--since")
    except ValidationError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert refused.startswith("--since ")
        return
    assert day.isoformat() == text.strip()
    assert parse_period(text, tz=BERLIN, now=NOW).label == text.strip()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-13", "--month '2026-13' is not a month of the calendar; use YYYY-MM"),
        ("0000-01", "--month '0000-01' is not a month of the calendar; use YYYY-MM"),
        ("9999-02", "--month 9999-02-01 is outside the dates ometer works with"),
        ("２０２６-１１", "--month '２０２６-１１' is not one of"),
    ],
)
def test_a_bad_month_is_named_by_its_option(text: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_period(text, tz=BERLIN, now=NOW, what="--month")
    assert str(raised.value).startswith(says)


def test_since_until_are_inclusive_local_days() -> None:
    window = window_between("2026-11-01", "2026-11-02", tz=BERLIN, now=NOW)
    assert window.start == datetime(2026, 10, 31, 23, tzinfo=UTC)
    assert window.end == datetime(2026, 11, 2, 23, tzinfo=UTC)
    open_ended = window_between(None, None, tz=UTC, now=NOW)
    assert open_ended.start.year == 1970 and open_ended.end == datetime(2026, 11, 27, tzinfo=UTC)
    with pytest.raises(ValidationError, match="not a date"):
        window_between("first of may", None, tz=UTC, now=NOW)


def test_buckets_follow_the_wall_clock_across_dst() -> None:
    window = parse_period("2026-03", tz=BERLIN, now=NOW)
    days = bucket_bounds(window, "day", BERLIN)
    assert len(days) == 31 and days[0][1] == "2026-03-01"
    assert (
        days[29][0] - days[28][0] == (days[28][0] - days[27][0]) - (days[28][0] - days[27][0]) / 24
    )
    weeks = bucket_bounds(window, "week", BERLIN)
    assert weeks[0][1] == "2026-W09" and weeks[-1][1] == "2026-W14"
    months = bucket_bounds(
        window_between("2025-12-15", "2026-02-01", tz=BERLIN, now=NOW), "month", BERLIN
    )
    assert [label for _, label in months] == ["2025-12", "2026-01", "2026-02"]
    with pytest.raises(ValueError, match="unknown time unit"):
        bucket_bounds(window, "year", BERLIN)


@given(zone=st.sampled_from(["America/New_York", "Pacific/Honolulu", "Asia/Tokyo", "UTC"]))
def test_all_time_begins_where_the_ledger_does_in_every_zone(zone: str) -> None:
    """With no ``--since`` a report runs from the first instant the ledger takes (1970-01-01
    00:00 UTC, a clock that booted at the epoch). It ran from local midnight on 1 January
    1970: in New York five hours later, so the calls of those hours were in the ledger and in
    no report (their local month, December 1969, is before the first day a period can name)."""
    tz = ZoneInfo(zone)
    window = window_between(None, "2026-11-30", tz=tz, now=datetime(2026, 12, 1, tzinfo=UTC))
    first = datetime.combine(datetime(1970, 1, 1).date(), datetime.min.time(), tz)
    assert window.start == min(datetime(1970, 1, 1, tzinfo=UTC), first.astimezone(UTC))
    assert window.label == "start..2026-11-30"


@given(text=st.text(min_size=201, max_size=400), grow=st.integers(1, 5_000))
@example(text="x" * 201, grow=5_000)
@example(text="2026-11-0" + "1" * 200, grow=1)
def test_a_long_period_or_date_is_named_by_its_start(text: str, grow: int) -> None:
    """A URL's ``period=`` of 15,000 characters was the dashboard's 400, quoted whole (15 KB
    of error, in a log line or on a terminal too): the error quotes its start (each character
    at most 10 as repr() escapes it) and its size."""
    long = text * grow
    for parse in (
        lambda: parse_period(long, tz=BERLIN, now=NOW),
        lambda: parse_day(long, what="since"),
        lambda: window_between("2026-11-01", long, tz=BERLIN, now=NOW, names=("since", "until")),
    ):
        with pytest.raises(ValidationError) as raised:
            parse()
        said = str(raised.value)
        assert len(said) < 1_500 and f"({len(long):,} characters)" in said, said
