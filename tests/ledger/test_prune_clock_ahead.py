"""A prune on a host whose clock is wrong: the horizon never passes the ledger's newest span
less the days kept, so a clock a year ahead removes no recent span and sets no future horizon
(which would have set aside every call recorded afterwards as before the horizon)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter, prune
from ollama_meter.periods import day_of, local_midnight
from tests.factories import make_span

START = datetime(2026, 1, 1, tzinfo=UTC)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    minutes=st.lists(st.integers(0, 400 * 24 * 60), min_size=1, max_size=12, unique=True),
    keep=st.integers(1, 60),
    ahead_days=st.integers(-30, 800),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/Santiago", "Pacific/Chatham"]),
)
@example(minutes=[300 * 24 * 60, 350 * 24 * 60], keep=30, ahead_days=365, zone="UTC")
def test_a_prune_by_a_clock_far_ahead_keeps_the_days_before_the_newest_span(
    tmp_path_factory: Any, minutes: list[int], keep: int, ahead_days: int, zone: str
) -> None:
    """`ometer db prune --keep-days 30` on a host whose clock read a year ahead removed every
    span, the ones recorded an hour before too, and set the horizon 11 months into the future:
    every call recorded after the clock was put right went to quarantine as before it. Where
    the clock's horizon would take every span, it is now midnight N days before the newest
    span's day; elsewhere the clock's, as it was."""
    path: Path = tmp_path_factory.mktemp("clock") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", zone=zone)
    tz = ZoneInfo(zone)
    starts = [START + timedelta(minutes=m) for m in minutes]
    ledger.record([make_span(started_at=s, ended_at=s + timedelta(seconds=1)) for s in starts])
    newest = max(starts)
    clock = newest + timedelta(days=ahead_days)
    result = prune(ledger, keep, clock=lambda: clock)
    # days of the ledger's zone: the clock's horizon would take every span, or not
    far = day_of(newest, tz) < day_of(clock, tz) - timedelta(days=keep)
    cutoff = local_midnight(day_of(newest if far else clock, tz) - timedelta(days=keep), tz)
    assert (result.cutoff, result.held_by) == (cutoff, newest if far else None)
    kept = sorted(s.started_at for s in ledger.latest(SpanFilter(), limit=100))
    assert kept == sorted(s for s in starts if s >= cutoff)
    assert newest in kept
    ledger.dispose()


def test_db_prune_on_a_host_a_year_ahead_keeps_the_recent_spans_and_says_why(
    cli: Any, sqlite_url: str
) -> None:
    """The ledger's calls all a year before this host's clock (as they are to a host whose
    clock reads a year ahead): `db prune --keep-days 30` removed all of them and said only
    `removed 3 span(s)`. Now it removes the one more than 30 days before the newest, and says
    on stderr what it counted from and what to do about a wrong clock."""
    now = datetime.now(UTC)
    newest = now - timedelta(days=365)
    starts = [newest, newest - timedelta(days=10), newest - timedelta(days=45)]
    Ledger(sqlite_url).record([make_span(started_at=s) for s in starts])
    done = cli("db", "prune", "--keep-days", "30", "--db", sqlite_url)
    assert done.code == 0 and done.stdout.startswith("removed 1 span(s)"), done
    said = " ".join(done.stderr.split())
    assert f"the newest span started {newest:%Y-%m-%d %H:%M} UTC" in said
    assert "if this host's clock is wrong (timedatectl), put it right" in said
    assert Ledger(sqlite_url).count() == 2


def test_db_prune_flags_spans_stamped_days_after_its_clock(cli: Any, sqlite_url: str) -> None:
    """A gateway whose host clock ran ahead stamps its calls in days to come: they sit in
    those days' cells, today's reports lack them, and nothing said so. A prune counts them
    (more than a day past its clock) and says which is the latest."""
    now = datetime.now(UTC)
    ahead = [now + timedelta(days=30, minutes=n) for n in range(3)]
    Ledger(sqlite_url).record(
        [make_span(started_at=s) for s in [now, now + timedelta(hours=2), *ahead]]
    )
    done = cli("db", "prune", "--keep-days", "30", "--db", sqlite_url)
    assert done.code == 0, done
    said = " ".join(done.stderr.split())
    assert (
        f"3 span(s) started more than a day after this clock's now, the latest "
        f"{ahead[-1]:%Y-%m-%d %H:%M} UTC" in said
    ), said
    assert Ledger(sqlite_url).count() == 5
