"""Snapshots of what the ledger says: a server's readers never wait on a reload (issue 11 item 8)."""

from __future__ import annotations

import logging
import threading

import pytest

from ollama_meter._reloaded import Reloaded, WouldBlock
from ollama_meter.errors import LedgerError


class SlowLedger:
    """A load that counts, and can be held inside the load (a slow database) or fail (a dead one)."""

    def __init__(self) -> None:
        self.loads = 0
        self.inside = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.down = False

    def __call__(self) -> int:
        self.loads += 1
        if self.down:
            raise LedgerError("the database is away")
        self.inside.set()
        # Bounded, so a reader that did wait fails the assertion below instead of hanging.
        self.release.wait(timeout=30)
        return self.loads


def test_readers_take_the_snapshot_while_a_background_reload_is_stuck() -> None:
    slow = SlowLedger()
    prices = Reloaded(slow, ttl=0, what="price rules")
    assert prices.get() == 1  # the first load happens on demand: nothing is known yet
    prices.keep_fresh()
    slow.inside.clear()
    slow.release.clear()
    reload = threading.Thread(target=prices.refresh)
    reload.start()
    assert slow.inside.wait(timeout=30)  # the reload holds the lock, inside a slow query
    assert prices.get() == 1 and prices.snapshot() == 1 and prices.peek() == 1
    assert reload.is_alive()  # the readers did not wait for it
    slow.release.set()
    reload.join()
    assert prices.get() == 2 and slow.loads == 2


def test_without_a_background_task_the_reader_reloads_when_due() -> None:
    slow = SlowLedger()
    prices = Reloaded(slow, ttl=0, what="price rules")
    assert prices.get() == 1
    assert prices.peek() is None  # due: only a load can say
    with pytest.raises(WouldBlock, match="price rules must be read from the ledger first"):
        prices.snapshot()
    assert prices.get() == 2


def test_a_failed_refresh_keeps_the_value_and_never_raises() -> None:
    slow = SlowLedger()
    budgets = Reloaded(slow, ttl=0, what="budgets")
    budgets.refresh()  # nothing loaded yet: a background task leaves the first load to a reader
    assert slow.loads == 0
    with pytest.raises(WouldBlock):
        budgets.snapshot()
    assert budgets.get() == 1
    budgets.keep_fresh()
    slow.down = True
    budgets.refresh()
    assert slow.loads == 2 and budgets.snapshot() == 1
    slow.down = False
    budgets.expire()  # this process changed the budgets: the next reader reloads, even now
    with pytest.raises(WouldBlock):
        budgets.snapshot()
    assert budgets.get() == 3


def test_a_first_load_that_fails_says_so() -> None:
    slow = SlowLedger()
    slow.down = True
    with pytest.raises(LedgerError, match="away"):
        Reloaded(slow, ttl=30, what="budgets").get()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "failure",
    [
        LedgerError("budget 3 in the ledger cannot be read: period 'fortnight' is not one of day"),
        ValueError("a bug of ours"),
    ],
)
def test_the_last_good_value_stays_whatever_the_failure_said_once_per_10_s(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a LedgerError kept the value loaded before: anything else (a budget row edited by
    hand to a value no budget takes raised a ValueError) was raised to every caller, or logged
    with a traceback at every reload of a server, every few seconds."""
    clock, loads = Clock(), iter([1])

    def load() -> int:
        value = next(loads, None)
        if value is None:
            raise failure
        return value

    budgets = Reloaded(load, ttl=0.5, what="budgets", clock=clock)
    assert budgets.get() == 1
    caplog.set_level(logging.WARNING, "ollama_meter")
    for second in range(2, 14):  # a reload due every second, failing each time
        clock.now = second
        if second % 2:  # a reader, as a CLI run or the Python API reads
            assert budgets.get() == 1
        else:  # a server's background task
            budgets.refresh()
            assert budgets.peek() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"keeping the budgets loaded before: {failure}",
        f"keeping the budgets loaded before: {failure} (and 9 more time(s) in the last 10 s)",
    ]
    # A traceback only for what no ometer error explains: a bug to report.
    assert [r.exc_info is not None for r in caplog.records] == [isinstance(failure, ValueError)] * 2


def test_a_server_reads_the_value_as_it_starts_and_keeps_it_when_the_first_reader_cannot() -> None:
    """A server whose database went away before its first call had nothing in force: every
    call was refused. ``keep_fresh`` reads the value at once; the first reader reads it again
    (a change made since is in force at once), and keeps that one when the ledger is away."""
    slow = SlowLedger()
    prices = Reloaded(slow, ttl=30, what="price rules")
    prices.keep_fresh()
    assert slow.loads == 1
    with pytest.raises(WouldBlock):
        prices.snapshot()  # the first reader loads again, from a thread
    assert prices.get() == 2 and prices.snapshot() == 2  # read again, now a snapshot
    away = SlowLedger()
    away_prices = Reloaded(away, ttl=30, what="price rules")
    away_prices.keep_fresh()
    away.down = True
    assert away_prices.get() == 1 and away_prices.snapshot() == 1 and away.loads == 2
    nothing = SlowLedger()
    nothing.down = True
    never = Reloaded(nothing, ttl=30, what="budgets")
    never.keep_fresh()  # the ledger away as it starts: the first reader says so
    with pytest.raises(LedgerError, match="away"):
        never.get()
