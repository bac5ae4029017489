"""A call is priced by the rules of the day that holds it, the day reports and ``reprice`` cut."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import example, given, strategies as st

from ollama_meter.periods import day_of, local_midnight
from ollama_meter.pricing import PriceBook, PriceRule

_ZONES = ["America/St_Johns", "America/Goose_Bay", "America/Moncton", "Europe/Berlin", "UTC"]


@given(
    zone=st.sampled_from(_ZONES),
    moment=st.datetimes(datetime(2005, 1, 1), datetime(2012, 1, 1), timezones=st.just(UTC)),
)
@example(zone="America/St_Johns", moment=datetime(2005, 10, 30, 2, 45, tzinfo=UTC))
def test_a_call_is_priced_by_the_rule_of_the_day_that_holds_it(zone: str, moment: datetime) -> None:
    """Where the clock went back across midnight (St John's, 00:01 to 23:01, until 2011), the
    hour after the first midnight reads 23:xx of the day before but is the new day's: reports
    and ``reprice --since`` that day took the call, and priced it by the day before's rule."""
    tz = ZoneInfo(zone)
    day = day_of(moment, tz)
    assert local_midnight(day, tz) <= moment
    old = PriceRule("*", "USD", id=1, input_per_1m=Decimal(1))
    new = PriceRule("*", "USD", id=2, input_per_1m=Decimal(2), effective_from=day)
    book = PriceBook([old, new], tz=tz, currency="USD")
    assert book.rule_for("llama3.1:8b", moment) == new
    assert book.rule_for("llama3.1:8b", moment - timedelta(microseconds=1)) == (
        new if day_of(moment - timedelta(microseconds=1), tz) == day else old
    )
    assert new.effective_from == day and isinstance(day, date)


@given(
    zone=st.sampled_from([*_ZONES, "Pacific/Apia", "Asia/Kolkata"]),
    start=st.datetimes(datetime(2005, 1, 1), datetime(2012, 1, 1), timezones=st.just(UTC)),
    steps=st.lists(st.integers(-3 * 86_400_000_000, 3 * 86_400_000_000), max_size=30),
)
@example(
    zone="America/St_Johns",
    start=datetime(2005, 10, 30, 2, 45, tzinfo=UTC),
    steps=[-3_600_000_000, 3_599_999_999, 1, -60_000_000, 7_200_000_000],
)
@example(  # a day of 23 hours: the next midnight is an hour early by the clock
    zone="Europe/Berlin", start=datetime(2010, 3, 28, 12, tzinfo=UTC), steps=[37_800_000_000]
)
@example(  # Apia skipped 2011-12-30 altogether
    zone="Pacific/Apia",
    start=datetime(2011, 12, 29, 9, 59, tzinfo=UTC),
    steps=[60_000_000, -1, 86_400_000_000, -86_400_000_001],
)
def test_the_days_a_price_book_keeps_are_the_days_reports_cut(
    zone: str, start: datetime, steps: list[int]
) -> None:
    """A price book keeps the last day's stretch instead of asking the zone at every call: the
    day it gives any moment, however the moments come, is :func:`day_of`'s."""
    tz = ZoneInfo(zone)
    book = PriceBook([], tz=tz, currency="USD")
    moment = start
    for step in [0, *steps]:
        moment += timedelta(microseconds=step)
        assert book.days.of(moment) == day_of(moment, tz)
