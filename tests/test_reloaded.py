"""Snapshots of what the ledger says: a server's readers never wait on a reload (issue 11 item 8)."""

from __future__ import annotations

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
