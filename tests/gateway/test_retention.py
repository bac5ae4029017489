"""OMETER_KEEP_DAYS: a gateway prunes raw spans past the horizon, and reports stay the same."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import timedelta
from typing import Any

import pytest

from ollama_meter.gateway._retention import prune_daily
from ollama_meter.ledger import Ledger, SpanFilter, prune
from ollama_meter.ledger._meta import pruned_before, set_meta
from ollama_meter.meter import utc_now
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span


def test_a_gateway_prunes_what_is_older_than_keep_days(
    serve: Any, db_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_KEEP_DAYS", "30")
    now = utc_now()
    old = [make_span(started_at=now - timedelta(days=40 + n)) for n in range(5)]
    recent = [make_span(started_at=now - timedelta(days=n)) for n in range(3)]
    Ledger(db_url).record([*old, *recent])
    gateway = serve(emulator.url)
    deadline = time.monotonic() + 20
    while gateway.ledger.count() > 3:
        assert time.monotonic() < deadline, "the gateway did not prune"
        time.sleep(0.05)
    assert {s.id for s in gateway.ledger.latest(SpanFilter(), 10)} == {s.id for s in recent}
    with gateway.ledger.read() as conn:
        horizon = pruned_before(conn)
    assert horizon is not None


def test_a_gateway_told_to_stop_stops_its_prune_between_pieces_and_says_what_it_left(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`systemctl stop` (SIGTERM) waited for the day's prune to end: 30 s for a ledger of 1M
    old spans, past systemd's 90 s on a bigger one, then SIGKILL. Now the prune stops
    before its next piece and the log says what is left for the next one."""
    now = utc_now()
    ledger = Ledger(sqlite_url)
    ledger.record([make_span(started_at=now - timedelta(days=40 + n)) for n in range(5)])
    ledger.record([make_span(started_at=now)])  # in use: its clock's horizon takes not all
    path = ledger.path
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the prune's first piece waits for it

    async def stopped_at_once() -> None:
        task = asyncio.create_task(prune_daily(ledger, 30))
        await asyncio.sleep(0)  # the task has run to its wait: the prune is in the pool
        task.cancel()
        for _ in range(10):  # the task takes the cancellation and tells the prune to stop...
            await asyncio.sleep(0)
        holder.execute("ROLLBACK")  # ...before its first piece can take the lock
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="ollama_meter.gateway"):
        asyncio.run(stopped_at_once())
    holder.close()
    assert ledger.count() == 6  # all there: the next prune removes them
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.gateway"]
    assert any(
        "pruning stopped after removing 0 span(s) started before" in line
        and "left for the next prune" in line
        for line in said
    ), said
    assert prune(ledger, 30, now=utc_now()).removed == 5


def test_a_refused_prune_is_tried_again_within_the_hour_not_the_next_day(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A prune refused (a `db rollup` under way, a locked or absent ledger) was tried again
    only a day later: a gateway started beside a long rebuild kept a day's worth of spans
    more than OMETER_KEEP_DAYS says, every time."""
    now = utc_now()
    ledger = Ledger(sqlite_url)
    ledger.record([make_span(started_at=now - timedelta(days=40 + n)) for n in range(5)])
    ledger.record([make_span(started_at=now)])  # in use: its clock's horizon takes not all
    with ledger.write() as conn:
        set_meta(conn, "rebuilding", "2026-01-01")  # a rebuild stopped half way

    async def refused_then_done() -> None:
        task = asyncio.create_task(prune_daily(ledger, 30, retry=0.05))
        try:
            while not any("failed" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)
            assert ledger.count() == 6
            with ledger.write() as conn:
                set_meta(conn, "rebuilding", None)  # the rebuild finished
            while ledger.count() > 1:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    with caplog.at_level(logging.INFO, logger="ollama_meter.gateway"):
        asyncio.run(asyncio.wait_for(refused_then_done(), 30))
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.gateway"]
    assert any("being rebuilt" in line and "tried again in" in line for line in said), said
