"""Write-behind under faults: a full disk under the journal, a journal rotating while another
process recovers, a commit that races the call's close. The gateway answers a call once its
span is whole in the journal: each test checks that "whole" is true, and that what a dead
process's journal says is what happened."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import func, select

from ollama_meter.budgets import Budget
from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger, SpanFilter, _journal
from ollama_meter.ledger._journal import Journal
from ollama_meter.ledger.models import BUDGET_RESERVATIONS
from ollama_meter.meter import Meter, _behind
from ollama_meter.meter._behind import WriteBehind
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.testing import OllamaEmulator
from tests._tmpfs import small_tmpfs
from tests.factories import make_span, token_prices
from tests.integrity.test_disk_full import fill
from tests.integrity.test_journal_lines import _no_prices
from tests.integrity.test_write_behind import _opening


@contextmanager
def tracing(hook: Callable[..., Any], *, threads: bool = False) -> Iterator[None]:
    """``hook`` as this thread's trace function (``threads``: that of threads started meanwhile),
    then what traced before put back: coverage measures the suite through the same hook, and a
    test that left None there stopped it for every test after it in its process."""
    if threads:
        before_threads = threading.gettrace()
        threading.settrace(hook)
        try:
            yield
        finally:
            threading.settrace(before_threads)  # type: ignore[arg-type]
        return
    before = sys.gettrace()
    sys.settrace(hook)
    try:
        yield
    finally:
        sys.settrace(before)


def leases(ledger: Ledger) -> int:
    """Budget lease rows in the ledger: what processes hold."""
    with ledger.read() as conn:
        return int(conn.execute(select(func.count()).select_from(BUDGET_RESERVATIONS)).scalar_one())


def _as_dead(writer: Journal, ledger: Ledger, name: str) -> Path:
    """A copy of ``writer``'s file as a process killed now leaves it (nobody holds its lock)."""
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    dead = ledger.journal.directory / f"9-{name}.journal"
    shutil.copy(writer._path, dead)
    return dead


def test_a_journal_line_a_full_disk_cuts_short_is_not_taken_for_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A write to a full disk writes what fits in the file's last block and says so by its
    count, not by an error: the whole span was taken for noted (the call answered before its
    commit) while the journal held half a line, which also swallowed the next call's
    opening once there was room again. A kill then recorded the answered call as
    interrupted and left no trace of the next one."""
    ledger = Ledger(sqlite_url)
    with small_tmpfs(tmp_path, "1m") as disk:
        writer = Journal(disk / "journal")
        answered = make_span(prompt="p" * 100, reply="r" * 20_000)  # content capture on
        writer.opened(answered, 3)  # the file's first block, with room left in it
        filler = fill(disk)
        assert not writer.finished(answered)  # not whole: committed before its answer
        filler.unlink()
        later = make_span()
        writer.opened(later, 5)
        _as_dead(writer, ledger, "torn")
        writer.close()
    assert recover_interrupted(ledger, _no_prices) == 2
    stored = {s.id: s for s in ledger.latest(SpanFilter(), 100)}
    assert {i: (s.status, s.input_tokens) for i, s in stored.items()} == {
        answered.id: ("interrupted", 3),
        later.id: ("interrupted", 5),
    }
    assert not (ledger.journal.quarantine_dir).exists()


@pytest.mark.parametrize("moment", ["asks for its lock", "lists the folder"])
def test_a_journal_rotating_as_another_process_recovers_is_not_taken_for_a_dead_ones(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """A journal grown past its size is rewritten with its open calls, and the old file let go.
    Another process recovering then (any ``ometer chat``, a Python client starting) could
    lock that old file, as it locks a dead process's, and record the calls still open in it:
    a call in flight was recorded as interrupted, charged an estimate, and its real span,
    committed later under the same id, was dropped as a duplicate."""
    monkeypatch.setattr(_journal, "ROTATE_BYTES", 2_000)
    ledger = Ledger(sqlite_url)  # the other process, sharing the journal folder
    live = Journal(ledger.journal.directory)  # the gateway's
    in_flight = make_span()
    live.opened(in_flight, 5)
    answered = [make_span() for _ in range(4)]
    for span in answered:
        live.opened(span, 3)
        assert live.finished(span)
    first = live._fd
    rotated: list[int] = []

    def rotate() -> None:
        rotated.append(1)
        live.closed([span.id for span in answered])  # committed: past 2,000 bytes, a rotation

    real_flock, real_close = fcntl.flock, os.close

    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB and not rotated:  # it has the old file open already
            rotate()
        real_flock(fd, operation)

    def close(fd: int) -> None:
        real_close(fd)
        if fd == first and not rotated:
            rotated.append(1)
            assert recover_interrupted(ledger, _no_prices) == 0

    if moment == "asks for its lock":
        monkeypatch.setattr(_journal.fcntl, "flock", flock)
        assert recover_interrupted(ledger, _no_prices) == 0
    else:
        monkeypatch.setattr(_journal.os, "close", close)
        live.closed([span.id for span in answered])
    monkeypatch.undo()
    assert rotated and live._fd != first
    assert ledger.count() == 0  # the gateway's calls are its own to record
    ledger.record([*answered, in_flight])  # its commits
    live.closed([span.id for span in [*answered, in_flight]])
    stored = {s.id: s.status for s in ledger.latest(SpanFilter(), 100)}
    assert stored == {s.id: s.status for s in [*answered, in_flight]}
    live.close()


def test_a_commit_that_ends_before_its_call_has_closed_settles_the_budget_as_committed(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The commit thread says where a waiting span went (``call.stored``) and settles the
    call's budget on it; the closing call then wrote "not yet" over it. A commit quick enough
    to end first (the closer descheduled, 64 ledger threads) had its budget settled as if the
    span were not in the ledger: its cost held in the lease for the rest of the period, and
    the lease never given back. The two steps are put in that order here with trace hooks,
    not with sleeps."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    assert meter.budgets is not None
    meter.budgets.reload_soon()
    settling, closed = threading.Event(), threading.Event()

    def in_commit_thread(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is _behind.settle.__code__:
            settling.set()  # the span is committed and call.stored says so: hold it here
            assert closed.wait(10)

    def in_closer(frame: FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code is WriteBehind.put.__code__:
            return after_put
        return None

    def after_put(frame: FrameType, event: str, arg: object) -> Any:
        if event == "return":
            assert settling.wait(10)  # the commit ended before this close does
        return after_put

    with tracing(in_commit_thread, threads=True):
        behind = WriteBehind(meter)
    try:
        call = meter.open(_opening("hello"))
        try:
            with tracing(in_closer):
                assert meter.close_now(call)
        finally:
            closed.set()
        assert call.span.cost_total > 0
        assert behind.settle(10)
        assert call.stored == "committed"
        meter.budgets.close()
        assert leases(meter.ledger) == 0  # nothing held once the gateway stops
    finally:
        closed.set()
        behind.stop(10)


def test_calls_closing_on_threads_at_once_never_wait_past_the_bound(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A call closing on one of the gateway's 64 ledger threads asked for room, then queued
    its span once priced and seen by the hooks: threads that all asked before any queued all
    got in, so up to 64 more spans (each with its prompt, up to the 32 MiB a body may have)
    waited than the bound allows. A hook that waits for all three puts them in that order."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter, most=1)
    blocker = threading.Event()
    commit = behind._commit
    behind._commit = lambda calls: (blocker.wait(30), commit(calls))  # type: ignore[method-assign]
    together = threading.Barrier(3, timeout=10)

    class AllAsked:
        def on_start(self, span: object) -> None:
            pass

        def on_end(self, span: object) -> None:
            together.wait()  # each close asked for room before this

    meter.observers.append(AllAsked())
    try:
        calls = [meter.open(_opening()) for _ in range(3)]
        for call in calls:
            meter.sending(call)
        closers = [threading.Thread(target=meter.close, args=(call,)) for call in calls]
        for closer in closers:
            closer.start()
        for closer in closers:  # one queued its span, two committed their own
            closer.join(30)
        assert sorted(call.behind for call in calls) == [False, False, True]
        blocker.set()
        assert behind.settle(30)
        assert [call.stored for call in calls] == ["committed"] * 3
        assert meter.ledger.count() == 3
    finally:
        blocker.set()
        behind.stop(30)


def test_a_span_queued_on_the_event_loop_as_the_gateway_stops_is_committed_and_settled(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A call closing on the event loop found room to wait, then the stop ran to its end
    (the commit thread gone) before its span was queued: it waited for a thread that no
    longer existed, uncommitted until the process ended, and its budget hold was never
    settled. The stop is run inside the close, just before the put, with a trace hook."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    assert meter.budgets is not None
    meter.budgets.reload_soon()
    behind = WriteBehind(meter)
    stopped: list[bool] = []

    def in_closer(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is WriteBehind.put.__code__ and not stopped:
            stopped.append(behind.stop(10))  # the whole stop, before this put takes the lock

    call = meter.open(_opening("hello"))
    with tracing(in_closer):
        assert meter.close_now(call)
    assert stopped == [True]
    assert behind.stop(10)  # a second stop waits for it too
    assert call.stored == "committed"
    assert meter.ledger.count() == 1
    meter.budgets.close()
    assert leases(meter.ledger) == 0  # its hold settled, and given back
