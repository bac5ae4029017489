"""A SQLite ledger file removed, moved aside or replaced while a process has it open.

SQLite keeps an open file open: without a check, a gateway would go on writing into a
deleted file (every span gone when it exits) or into the one moved aside. Each use
checks the file at the path is the one open, and a new one there is made a ledger.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter, backup
from ollama_meter.ledger._spans import insert_spans
from ollama_meter.records import SpanRecord
from tests.factories import make_span

AT = datetime(2026, 11, 10, 12, tzinfo=UTC)


def _spans(first: int, count: int) -> list[SpanRecord]:
    return [
        make_span(started_at=AT + timedelta(seconds=n), output_tokens=n)
        for n in range(first, first + count)
    ]


def _files(path: Path) -> list[Path]:
    return [path.with_name(path.name + end) for end in ("", "-wal", "-shm")]


def _ids(url: str) -> set[str]:
    return {s.id for s in Ledger(url).latest(SpanFilter(), 1000)}


@settings(max_examples=12, deadline=None)
@given(action=st.sampled_from(["removed", "moved aside", "restored"]), before=st.integers(1, 5))
def test_spans_written_after_the_file_went_go_to_the_file_at_the_path(
    tmp_path_factory: pytest.TempPathFactory, action: str, before: int
) -> None:
    folder = tmp_path_factory.mktemp("gone")
    path = folder / "l.db"
    url = f"sqlite:///{path}"
    running = Ledger(url)  # a gateway's, open all along
    early, late = _spans(0, before), _spans(100, 3)
    running.record(early)
    if action == "restored":
        backup(running, folder / "copy.db")
    for file in _files(path):
        if action == "removed":
            file.unlink(missing_ok=True)
        elif action == "moved aside" and file.exists():
            file.rename(folder / ("aside" + file.name[len("l") :]))
    if action == "restored":
        os.replace(folder / "copy.db", path)
    running.record(late)
    running.dispose()
    if action == "restored":
        # The old file's WAL is still at the path: replayed into the copy, it took back
        # what the copy was restored to be rid of. Refused (the spans wait in the spool)
        # until it is moved aside.
        with pytest.raises(LedgerError, match="-wal is left from another file"):
            Ledger(url)
        for file in _files(path)[1:]:
            file.rename(folder / ("stale" + file.name[len("l") :]))

    expected = {s.id for s in late} | ({s.id for s in early} if action == "restored" else set())
    assert _ids(url) == expected
    if action == "moved aside":
        assert _ids(f"sqlite:///{folder / 'aside.db'}") == {s.id for s in early}


def test_a_file_replaced_during_a_write_rolls_it_back_for_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(url)
    spans = _spans(0, 2)

    def write_as_it_goes() -> None:
        with ledger.write() as conn:
            insert_spans(conn, spans[:1])
            for file in _files(path):
                file.unlink(missing_ok=True)

    with pytest.raises(LedgerError, match="was removed or replaced during a write"):
        write_as_it_goes()
    ledger.record(spans[1:])  # the next write opens, and makes a ledger of, the file there now
    assert _ids(url) == {spans[1].id}


def test_threads_writing_as_the_file_is_removed_lose_nothing_written_after(tmp_path: Path) -> None:
    """Four threads share one ledger, as a gateway's do; the file goes while they write.
    Every span whose write began after it went is in the new ledger (or its spool)."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(url)
    after: list[SpanRecord] = []
    gone = threading.Event()
    go = threading.Barrier(5)

    def write(offset: int) -> None:
        go.wait()
        for n in range(12):
            span = _spans(offset + n, 1)
            late = gone.is_set()
            ledger.record(span)
            if late:
                after.extend(span)

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    go.wait()
    # The file itself last: a thread that noticed it gone before its -wal and -shm went made
    # new ones, which this loop then removed from under it (every later write was lost with
    # that -wal; ci70 at load, once). Removing a live ledger's -wal is not what this tests.
    for file in reversed(_files(path)):
        file.unlink(missing_ok=True)
    gone.set()
    for thread in threads:
        thread.join()
    ledger.dispose()
    assert after  # some writes came after it
    assert {s.id for s in after} <= _ids(url)  # a new process drains the spool, if any


def test_a_ledgers_folder_removed_is_said_to_be_gone_and_made_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger's folder removed while a client had the ledger open (``rm -rf`` of a job's
    work folder): the span went to the spool, said with "the folder ... is read-only to this
    user: make the folder writable", of a folder that was not there at all."""
    folder = tmp_path / "ledgers"
    url = f"sqlite:///{folder / 'l.db'}"
    ledger = Ledger(url)
    early, late = _spans(0, 1), _spans(100, 2)
    ledger.record(early)
    for file in _files(folder / "l.db"):
        file.unlink()
    folder.rmdir()
    ledger.record(late[:1])
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"the folder {folder} is gone" in said, said
    assert "read-only" not in said
    ledger.record(late[1:])
    ledger.dispose()
    assert _ids(url) == {s.id for s in late}  # the spool drained into the ledger made again
