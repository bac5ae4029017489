"""Gateways on several hosts share one PostgreSQL ledger, and their clocks disagree.

Each gateway here is given its host's wall clock as ``now``, skewed from the real one by up to
two days either way (NTP not yet run, a VM resumed, a clock set by hand). Leases and alert
claims must still hold exactly as long as they say, for every process, a rebuild's mark that it
is at work too, and a prune's horizon must be counted back from the same clock: the database
server's is the one they all share. (SQLite is one host's file: its processes share one clock.)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from sqlalchemy import select, text

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.budgets._leases import RESERVATION_TTL
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger, SpanFilter, _alert_rows as tables, prune
from ollama_meter.ledger._at_work import at_work, beat
from ollama_meter.ledger.models import BUDGET_ALERTS, BUDGET_RESERVATIONS
from ollama_meter.periods import current_period, day_of, local_midnight
from ollama_meter.records import Alert
from tests.conftest import _fresh_pg_database
from tests.factories import make_span

LIMIT = 10_000_000
SKEW = st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=2))
_names = (f"t{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def pg_ledger(pg_server: str | None) -> Ledger:
    """One PostgreSQL ledger for every example (each uses its own tenant)."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available (install postgresql or set OMETER_TEST_PG_URL)")
    return Ledger(_fresh_pg_database(pg_server))


def _server_clock(ledger: Ledger) -> datetime:
    with ledger.read() as conn:
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one().astimezone(UTC)


def _admit(gate: BudgetGate, tenant: str, call: str, amount: int, now: datetime) -> object:
    estimate = Estimate(amount, "USD")
    return gate.admit(call_id=call, tenant=tenant, department="sales", estimate=estimate, now=now)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(holder_skew=SKEW, asker_skew=SKEW, bound=st.integers(1, LIMIT - 1))
def test_a_lease_holds_for_its_ttl_by_the_servers_clock_whatever_the_hosts_clocks_say(
    pg_ledger: Ledger, holder_skew: timedelta, asker_skew: timedelta, bound: int
) -> None:
    """Each gateway wrote its lease's expiry by its own clock and judged others' by its own: one
    whose clock ran 16 minutes ahead saw a live lease as expired and admitted past the hard
    limit (a day ahead, it deleted the row outright); one whose clock ran an hour ahead, killed,
    left a lease that held the room for an hour and a quarter instead of 15 minutes."""
    before = _server_clock(pg_ledger)
    real = datetime.now(UTC)  # the true time, as this host's clock is the server's
    holder_now, asker_now = real + holder_skew, real + asker_skew
    # Both in one month: else each has its own month's budget, rightly.
    assume(
        current_period("month", tz=ZoneInfo("UTC"), now=holder_now).start
        == current_period("month", tz=ZoneInfo("UTC"), now=asker_now).start
    )
    tenant = next(_names)
    pg_ledger.save_budget(
        Budget(tenant=tenant, department="sales", period="month", limit=LIMIT, currency="USD")
    )
    holder, asker = (BudgetGate(pg_ledger, tz=ZoneInfo("UTC"), ttl=0) for _ in range(2))
    held = _admit(holder, tenant, "long-call", bound, holder_now)
    after = _server_clock(pg_ledger)
    with pg_ledger.read() as conn:
        (expires_at,) = conn.execute(
            select(BUDGET_RESERVATIONS.c.expires_at).where(BUDGET_RESERVATIONS.c.tenant == tenant)
        ).one()
    assert before + RESERVATION_TTL <= expires_at <= after + RESERVATION_TTL
    with pytest.raises(BudgetExceeded):
        _admit(asker, tenant, "one-too-many", LIMIT - bound + 1, asker_now)
    fits = _admit(asker, tenant, "fits", LIMIT - bound, asker_now)
    with pg_ledger.read() as conn:
        rows = conn.execute(
            select(BUDGET_RESERVATIONS.c.amount_micros).where(
                BUDGET_RESERVATIONS.c.tenant == tenant
            )
        ).scalars()
        assert sorted(rows) == sorted([bound, LIMIT - bound])  # the holder's row is still there
    for gate, reservation in ((holder, held), (asker, fits)):
        gate.settle(reservation)  # type: ignore[arg-type]
        gate.close()


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first_skew=SKEW, second_skew=SKEW)
def test_an_alert_claim_holds_its_seconds_by_the_servers_clock(
    pg_ledger: Ledger, first_skew: timedelta, second_skew: timedelta
) -> None:
    """A process whose clock ran behind claimed an alert until a moment already past for one
    whose clock ran ahead, which sent the alert a second time while the first was sending it;
    one whose clock ran an hour ahead, killed mid-delivery, kept every other process from
    retrying the alert for an hour instead of two minutes."""
    claim = timedelta(minutes=2)
    before = _server_clock(pg_ledger)
    real = datetime.now(UTC)
    month = datetime(2026, 11, 1, tzinfo=UTC)
    alert = Alert(0, 1, next(_names), "sales", "month", "2026-11", month, 90, 9, 10, "USD")
    with pg_ledger.budget_transaction() as store:
        alert_id = store.claim_alert(alert, real)
    assert alert_id is not None
    first, second = real + first_skew, real + second_skew
    with pg_ledger.write() as conn:
        assert tables.claim_attempt(conn, alert_id, first, first + claim) is not None
    after = _server_clock(pg_ledger)
    with pg_ledger.read() as conn:
        (until,) = conn.execute(
            select(BUDGET_ALERTS.c.claimed_until).where(BUDGET_ALERTS.c.id == alert_id)
        ).one()
    assert before + claim <= until <= after + claim
    with pg_ledger.write() as conn:
        assert tables.claim_attempt(conn, alert_id, second, second + claim) is None


def _host_clock(skew: timedelta) -> Callable[[], float]:
    return lambda: time.time() + skew.total_seconds()


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12", "Pacific/Chatham"])
def test_a_prune_counts_its_days_back_from_the_servers_clock(
    pg_server: str | None, zone: str
) -> None:
    """A prune's horizon is one for every process on the ledger and never moves back: a span
    that started before it is set aside, not recorded. A gateway whose clock ran two days
    ahead pruned with ``OMETER_KEEP_DAYS=1`` by its own clock, removed today's raw spans, and
    set aside every call the other gateways recorded until that day came."""
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
