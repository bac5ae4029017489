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
