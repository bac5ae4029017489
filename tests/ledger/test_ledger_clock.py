"""Marks every process on a shared ledger goes by are made and judged by the ledger's clock
(the PostgreSQL server's), not each host's, whose clocks disagree (NTP not yet run, a VM
resumed, a clock set by hand).

A prune's horizon is one for every process on the ledger and never moves back: a span that started
before it is set aside, not recorded: a gateway whose clock ran two days ahead pruned with ``OMETER_KEEP_DAYS=1`` by its own clock, removed today's raw spans,
and set aside every call the other gateways recorded until that day came.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text

from ollama_meter.ledger import Ledger, SpanFilter, prune
from ollama_meter.ledger._at_work import at_work, beat
from ollama_meter.periods import day_of, local_midnight
from tests.conftest import _fresh_pg_database
from tests.factories import make_span

SKEW = st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=2))


@pytest.fixture(scope="module")
def pg_ledger(pg_server: str | None) -> Ledger:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available (install postgresql or set OMETER_TEST_PG_URL)")
    return Ledger(_fresh_pg_database(pg_server))


def _host_clock(skew: timedelta) -> Callable[[], float]:
    return lambda: time.time() + skew.total_seconds()


def _server_clock(ledger: Ledger) -> datetime:
    with ledger.read() as conn:
        moment: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return moment.astimezone(UTC)


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12", "Pacific/Chatham"])
def test_a_prune_counts_its_days_back_from_the_servers_clock(
    pg_server: str | None, zone: str
) -> None:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available (install postgresql or set OMETER_TEST_PG_URL)")
    ledger = Ledger(_fresh_pg_database(pg_server), zone=zone)
    tz, before = ZoneInfo(zone), _server_clock(ledger)
    horizon = local_midnight(day_of(before, tz) - timedelta(days=1), tz)
    kept = [make_span(started_at=horizon + timedelta(microseconds=n)) for n in (0, 1)]
    gone = make_span(started_at=horizon - timedelta(microseconds=1))
    ledger.record([*kept, gone])

    result = prune(ledger, 1)

    after = _server_clock(ledger)
    if day_of(after, tz) != day_of(before, tz):  # midnight passed meanwhile: one day later
        horizon = local_midnight(day_of(after, tz) - timedelta(days=1), tz)
    assert (result.cutoff, result.removed) == (horizon, 1)
    late = make_span(started_at=after)  # a call another gateway records now: not set aside
    ledger.record([late])
    assert {s.id for s in ledger.latest(SpanFilter(), 10)} == {*(s.id for s in kept), late.id}
    ledger.dispose()


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rebuilder=SKEW, judge=SKEW)
def test_a_rebuild_at_work_is_judged_by_the_servers_clock_whatever_the_hosts_say(
    pg_ledger: Ledger, rebuilder: timedelta, judge: timedelta
) -> None:
    """A rebuild says it is at work with a time, and every other process judges it dead after
    ten minutes of silence. By each host's clock, one whose clock ran 20 minutes behind the
    rebuilder's took a rebuild of a moment ago for dead and rebuilt the same days at once; a
    rebuilder whose clock ran an hour ahead, killed, held every process opening a stale
    ledger (gateways starting) waiting an hour and ten minutes instead of ten."""
    with pg_ledger.write() as conn:
        beat(conn, clock=_host_clock(rebuilder))
    with pg_ledger.read() as conn:
        assert at_work(conn, clock=_host_clock(judge))
