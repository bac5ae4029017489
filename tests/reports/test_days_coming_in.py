"""A call recorded while a report reads: the buckets holding calls are read before the sums.

Seen in CI on ``/api/dash`` right after a gateway's first call: its span was committed
between the two reads, in a window none of whose days held a call yet, and the sums put it
in a bucket that was not there (IndexError, a 500). Where other days were held, the new
day's calls were in the report by department and missing from the one by day of the same
answer. Another process's write is made here at that moment: the ledger's own read of the
days is wrapped to record a span after it, as a gateway beside the report would.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.reports._perf import perf_report
from ollama_meter.reports._spend import spend_reports
from tests.factories import make_span

ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _write_after_first_read(
    monkeypatch: pytest.MonkeyPatch, ledger: Ledger, spans: list[Any]
) -> list[int]:
    """Record ``spans`` (through another ledger, as another process) right after the
    report's first read of the days with calls; the number of such reads."""
    real: Callable[..., Any] = Ledger.days_with_calls
    other = Ledger(ledger.url)
    reads: list[int] = []

    def days_with_calls(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        found = real(self, *args, **kwargs)
        reads.append(len(found))
        if len(reads) == 1:
            other.record(spans)
        return found

    monkeypatch.setattr(Ledger, "days_with_calls", days_with_calls)
    return reads


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(st.integers(0, 18), max_size=3),
    during=st.lists(st.integers(0, 18), min_size=1, max_size=3),
)
def test_a_call_recorded_between_the_reads_is_in_every_grouping_or_none(
    tmp_path_factory: pytest.TempPathFactory, before: list[int], during: list[int]
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('race')}/l.db")
    start = NOW.replace(day=1)
    spans = [make_span(started_at=start + timedelta(days=d), cost_total=10) for d in before]
    ledger.record(spans)
    later = [make_span(started_at=start + timedelta(days=d, hours=1), cost_total=7) for d in during]
    with pytest.MonkeyPatch.context() as mp:
        _write_after_first_read(mp, ledger, later)
        window = parse_period("2026-11", tz=ZONE, now=NOW)
        by_department, by_day = spend_reports(ledger, window, [["department"], ["day"]], tz=ZONE)
    total = sum(row.cost for row in by_department.rows)
    assert sum(row.cost for row in by_day.rows) == total
    assert total in (10 * len(before), 10 * len(before) + 7 * len(during))
    ledger.dispose()


@pytest.mark.parametrize("before", [[], [3]], ids=["no day held", "another day held"])
def test_perf_by_day_with_a_call_recorded_between_the_reads(
    sqlite_url: str, before: list[int]
) -> None:
    """The same race in ``ometer perf --by model,day``: an IndexError where no day was held."""
    ledger = Ledger(sqlite_url)
    start = NOW.replace(day=1)
    ledger.record([make_span(started_at=start + timedelta(days=d)) for d in before])
    later = [make_span(started_at=start + timedelta(days=9, hours=1))]
    with pytest.MonkeyPatch.context() as mp:
        _write_after_first_read(mp, ledger, later)
        window = parse_period("2026-11", tz=ZONE, now=NOW)
        report = perf_report(ledger, window, ["model"], unit="day", tz=ZONE)
    days = [dict(row.labels)["day"] for row in report.rows]
    assert days == [f"2026-11-{d + 1:02d}" for d in before] + ["2026-11-10"]
