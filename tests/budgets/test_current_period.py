"""A budget's current period is kept between calls (``current_period``): the window it gives
any moment, however the moments come and in whatever zone, is the one the period's text says
(``parse_period``), over days the clock jumps too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import example, given, strategies as st

from ollama_meter.periods import PERIOD_UNITS, current_period, parse_period
from tests.budgets.test_dst_days import DAYS

_ZONES = sorted({*DAYS, "Pacific/Apia", "America/Goose_Bay", "America/Sao_Paulo", "UTC"})
_DAY_US = 86_400_000_000


@given(
    zone=st.sampled_from(_ZONES),
    unit=st.sampled_from(sorted(PERIOD_UNITS)),
    start=st.datetimes(datetime(2005, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
    steps=st.lists(
        st.one_of(
            st.integers(-3_600_000_000, 3_600_000_000), st.integers(-40 * _DAY_US, 40 * _DAY_US)
        ),
        max_size=30,
    ),
)
@example(  # the clock turned back across midnight, 00:01 to 23:01
    zone="America/St_Johns",
    unit="day",
    start=datetime(2005, 10, 30, 2, 45, tzinfo=UTC),
    steps=[-3_600_000_000, 3_599_999_999, 1, -60_000_000, 7_200_000_000],
)
@example(  # Apia skipped 2011-12-30 altogether: a day of no time, at the end of a month
    zone="Pacific/Apia",
    unit="month",
    start=datetime(2011, 12, 29, 9, 59, tzinfo=UTC),
    steps=[60_000_000, -1, _DAY_US, -_DAY_US - 1, 3 * _DAY_US],
)
@example(  # the last microsecond of a month, then the first of the next, and back
    zone="Europe/Berlin",
    unit="month",
    start=datetime(2026, 11, 30, 22, 59, 59, 999_999, tzinfo=UTC),
    steps=[1, -1, 1],
)
def test_a_kept_period_is_the_one_its_text_says(
    zone: str, unit: str, start: datetime, steps: list[int]
) -> None:
    tz = ZoneInfo(zone)
    moment = start
    for step in [0, *steps]:
        moment += timedelta(microseconds=step)
        expected = parse_period(PERIOD_UNITS[unit], tz=tz, now=moment)
        assert current_period(unit, tz=tz, now=moment) == expected
        assert current_period(unit, tz=tz, now=moment) == expected  # kept, asked again
