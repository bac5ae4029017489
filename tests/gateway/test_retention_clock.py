"""OMETER_KEEP_DAYS on a host whose clock steps ahead while the gateway runs: the daily prune
counts back from the time that really went by since the gateway started, not from the clock."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.gateway._retention import SteadyClock, _prune_once
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._meta import pruned_before
from ollama_meter.ledger._types import from_us
from ollama_meter.periods import day_of, local_midnight
from tests.factories import make_span

START = datetime(2026, 6, 1, 9, tzinfo=UTC)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    history=st.lists(st.integers(1, 60 * 24 * 60), min_size=1, max_size=10, unique=True),
    keep=st.integers(1, 30),
    jump=st.one_of(st.just(0), st.integers(2 * 24 * 60, 800 * 24 * 60)),
    hours=st.integers(1, 72),
    stamped=st.lists(st.integers(0, 59), min_size=1, max_size=4, unique=True),
)
@example(
    history=[60, 10 * 24 * 60, 40 * 24 * 60], keep=30, jump=365 * 24 * 60, hours=24, stamped=[5]
)
@example(history=[1], keep=1, jump=0, hours=39, stamped=[0])  # idle: its newest days kept
@example(history=[1981], keep=1, jump=2880, hours=1, stamped=[0])  # not idle: one ahead
def test_a_clock_stepped_ahead_moves_no_horizon_past_the_time_that_went_by(
    tmp_path_factory: Any,
    caplog: pytest.LogCaptureFixture,
    history: list[int],
    keep: int,
    jump: int,
    hours: int,
    stamped: list[int],
) -> None:
    """A gateway pruned at start; then its host's clock stepped ``jump`` minutes ahead (a VM
    resumed with a clock set by hand, a dead RTC battery, NTP gone wrong) and it went on
    metering, stamping its calls ahead; ``hours`` later its next prune counted back from that
    clock, and from those calls: every span recorded before the step was removed, and the
    horizon set a year ahead for every process on the ledger (each call recorded once the
    clock was put right, until that day came, was set aside as before it). Now the prune
    counts back from the time that went by since the gateway started, keeps every span of
    the days it keeps, and says why."""
    path: Path = tmp_path_factory.mktemp("steady") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", zone="UTC")
    real = [START - timedelta(minutes=m) for m in history]
    ledger.record([make_span(started_at=s, ended_at=s + timedelta(seconds=1)) for s in real])
    wall, elapsed = [START], [1000.0]
    clock = SteadyClock(wall=lambda: wall[0], elapsed=lambda: elapsed[0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ollama_meter.gateway"):
        assert _prune_once(ledger, keep, threading.Event(), 60.0, clock)
        went_by = timedelta(hours=hours)
        elapsed[0] += went_by.total_seconds()
        wall[0] = START + timedelta(minutes=jump) + went_by  # the step, and the time since
        ahead = [START + timedelta(minutes=jump + m) for m in stamped]  # metered meanwhile
        ledger.record([make_span(started_at=s, ended_at=s + timedelta(seconds=1)) for s in ahead])
        assert _prune_once(ledger, keep, threading.Event(), 60.0, clock)
    now = START + went_by
    today = day_of(now, UTC)
    newest = max([*real, *ahead])
    if newest < now and day_of(newest, UTC) < today - timedelta(days=keep):
        today = day_of(newest, UTC)  # an idle ledger keeps its newest days (_upkeep.prune)
    cutoff = local_midnight(today - timedelta(days=keep), UTC)
    kept = sorted(s.started_at for s in ledger.latest(SpanFilter(), limit=100))
    assert kept == sorted(s for s in [*real, *ahead] if s >= cutoff)
    assert jump == 0 or set(ahead) <= set(kept)  # stamped ahead: kept
    with ledger.read() as conn:
        horizon = pruned_before(conn)
    assert horizon is None or from_us(horizon) <= cutoff
    stepped = f"this host's clock reads {timedelta(minutes=jump)} ahead of"
    assert (stepped in caplog.text) == (jump > 0), caplog.text  # no step: nothing to say
    ledger.dispose()
