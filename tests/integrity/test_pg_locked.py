"""A PostgreSQL ledger whose locks another session holds past OMETER_LEDGER_WAIT: the server's
own ``lock_timeout`` ends each wait, and the spans go to the spool after one wait, not two."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._rollup import REBUILD_LOCK
from ollama_meter.meter import GroupCommitWriter
from ollama_meter.records import Stored
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span

MIGRATION_LOCK = 0x6F6D6574
"""The advisory lock every ometer process takes to make or migrate a ledger."""


def _waits_for(ledger: Ledger, lock: str) -> list[str]:
    """Each statement of ``ledger`` that asks for ``lock`` (each waits up to lock_timeout)."""
    asked: list[str] = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if lock in statement:
            asked.append(statement)

    return asked


ROLLUPS = "pg_advisory_xact_lock_shared"
"""What each span write asks for first: the lock a rollup rebuild holds whole."""


@contextlib.contextmanager
def _lock_timeouts(target: Any, asked: threading.Event | None = None) -> Iterator[list[str]]:
    """The ``lock_timeout`` each span write of ``target`` (an engine, or every engine) asks
    for the rollups' lock under in the block, as the server has it then: each request waits
    that long at most. ``asked`` is set at the first request."""
    timeouts: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if ROLLUPS in statement:
            timeouts.append(cursor.connection.execute("SHOW lock_timeout").fetchone()[0])
            if asked is not None:
                asked.set()

    event.listen(target, "before_cursor_execute", seen)
    try:
        yield timeouts
    finally:
        event.remove(target, "before_cursor_execute", seen)


def test_a_span_write_the_rollups_lock_holds_up_waits_once_then_spools(
    pg_url: str, holder: Connection
) -> None:
    """The write retried a lock error while OMETER_LEDGER_WAIT had not run out; but
    PostgreSQL's lock_timeout is that wait less a margin, so the second try began just before
    the deadline and waited as long again: a call's span took twice the wait to reach the
    spool (9 s by default, where ometer chat is said to answer within 5 s)."""
    ledger = Ledger(pg_url, wait=1.0)
    first, second = make_span(department="sales"), make_span(department="ops")
    asked = _waits_for(ledger, "pg_advisory_xact_lock_shared")
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    assert ledger.record([first]) == {first.id: Stored.SPOOLED}
    assert len(asked) == 1
    holder.rollback()
    assert ledger.record([second]) == {second.id: Stored.COMMITTED}  # and brings in the first
    assert ledger.count() == 2
    ledger.dispose()


def test_making_a_ledger_another_process_is_making_past_the_wait_fails_after_one_wait(
    pg_url: str, holder: Connection
) -> None:
    """The same retry made a process that found another making or migrating the ledger
    (``ometer db upgrade`` on a big one) wait twice the wait before saying so."""
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    asked: list[Any] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "pg_advisory_xact_lock" in statement and MIGRATION_LOCK in dict(parameters).values():
            asked.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        with pytest.raises(LedgerError) as failed:
            Ledger(pg_url, wait=1.0)
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert str(failed.value) == (
        f"cannot open the ledger at {make_url(pg_url).render_as_string()}: canceling statement "
        "due to lock timeout: another process held it for longer than 0.8 s "
        "(OMETER_LEDGER_WAIT); run again once it is done, or wait longer with "
        "OMETER_LEDGER_WAIT=60"
    )
    assert len(asked) == 1


def test_spans_a_process_found_spooled_but_could_not_record_as_it_opened_come_in_later(
    pg_url: str, holder: Connection, tmp_path: Any
) -> None:
    """Opening the ledger records the spool; when that failed (the ledger locked or away as
    a gateway started), nothing said the spool still held spans, so the process's next
    writes succeeded and left them out of the ledger (out of reports and budgets) until
    the next process opened it: for a gateway, until its restart."""
    spool = tmp_path / "spool"
    before = make_span(department="sales")
    writer = Ledger(pg_url, wait=1.0, spool_dir=spool)
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    assert writer.record([before]) == {before.id: Stored.SPOOLED}
    writer.dispose()
    gateway = Ledger(pg_url, wait=1.0, spool_dir=spool)  # its recovery meets the lock
    assert len(gateway.spool.pending()) == 1
    holder.rollback()
    after = make_span(department="ops")
    assert gateway.record([after]) == {after.id: Stored.COMMITTED}
    assert gateway.spool.pending() == [] and gateway.count() == 2
    gateway.dispose()


def test_spans_queued_behind_a_commit_the_lock_held_up_past_the_wait_do_not_wait_again(
    pg_url: str, holder: Connection
) -> None:
    """Gateway calls past the write-behind backlog commit their own spans through the group
    commit: under a held rollups lock, such a call queued behind the commit that was waiting
    out the lock, then waited out the lock once more for its own: 9 s where the README says 5.
    The ledger found locked past the wait just now, the next write asks without waiting."""
    ledger = Ledger(pg_url, wait=1.0)
    ledger.drain_slice = 60.0  # both spooled files in the next write, however busy the machine
    writer = GroupCommitWriter(ledger)
    asked = threading.Event()
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    first, second = make_span(department="sales"), make_span(department="ops")
    stored: dict[str, Stored] = {}
    leading = threading.Thread(target=lambda: stored.update(writer.write_many([first])))
    with _lock_timeouts(ledger.engine, asked) as timeouts:
        leading.start()
        assert asked.wait(10)
        stored.update(writer.write_many([second]))  # queued behind the first's commit
        leading.join()
    assert stored == {first.id: Stored.SPOOLED, second.id: Stored.SPOOLED}
    assert timeouts == ["800ms", "50ms"]  # one wait, then a glance
    holder.rollback()
    third = make_span(department="legal")
    assert ledger.record([third]) == {third.id: Stored.COMMITTED}  # a glance that finds it free
    assert ledger.count() == 3 and ledger.spool.pending() == []
    ledger.dispose()


def test_chat_with_spans_spooled_before_waits_for_a_locked_ledger_once(
    pg_url: str,
    holder: Connection,
    cli: Any,
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ometer chat`` opening a ledger whose spool held spans waited out the lock recording
    them, then again for its own span: twice OMETER_LEDGER_WAIT. Opening now only glances at
    the lock; the spool is recorded by a later write."""
    monkeypatch.setenv("OMETER_DB_URL", pg_url)
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    earlier = Ledger(pg_url, wait=1.0)  # the spool every process on this machine shares
    earlier.spool.put([make_span(department="sales")])
    earlier.dispose()
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    with _lock_timeouts(Engine) as timeouts:
        result = cli("chat", "--dept", "ops", "-m", "llama3.1:8b", "hello")
    assert result.code == 0 and result.stdout.strip()
    assert timeouts == ["50ms", "800ms"]  # the spool at open: a glance; its own span: one wait
    holder.rollback()
    later = Ledger(pg_url, wait=1.0)
    assert later.count() == 2 and later.spool.pending() == []
    later.dispose()
