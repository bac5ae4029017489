"""A SQLite ledger file damaged under a process that has it open.

Pages overwritten with garbage, the file cut short, other bytes written over it: each write
fails ("database disk image is malformed", "file is not a database"). The spans go to the
spool, the ledger says why its writes fail (``/healthz`` reads it), and once a good copy is
put in place, by rename or copied over the file itself, the next write records them all.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter, backup
from ollama_meter.records import SpanRecord, Stored
from tests.factories import make_span

AT = datetime(2026, 11, 10, 12, tzinfo=UTC)


def _spans(first: int, count: int) -> list[SpanRecord]:
    return [
        make_span(started_at=AT + timedelta(seconds=n), output_tokens=n)
        for n in range(first, first + count)
    ]


def _ids(url: str) -> set[str]:
    ledger = Ledger(url)
    try:
        return {s.id for s in ledger.latest(SpanFilter(), 1000)}
    finally:
        ledger.dispose()


def damage(path: Path, how: str) -> None:
    """Damage the ledger at ``path`` as a disk or a person would, its WAL checkpointed first
    (what a running gateway's connections had cached in the WAL is in the file then)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [
            row[0]
            for row in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'spans' AND rootpage > 0"
            )
        ]
    conn.close()
    if how == "garbage in the spans' pages":  # the zone's row, read by /healthz, is intact
        with open(path, "r+b") as file:
            for root in roots:
                file.seek((root - 1) * size)
                file.write(bytes(range(256)) * (size // 256))
    elif how == "emptied":
        os.truncate(path, 0)
    elif how == "cut in half":
        os.truncate(path, os.stat(path).st_size // 2)
    elif how == "text written over it":
        with open(path, "r+b") as file:
            file.write(b"not a ledger\n" * 1000)
    else:
        raise AssertionError(how)


def restore(copy: Path, path: Path, how: str) -> None:
    if how == "renamed into place":
        for end in ("-wal", "-shm"):
            path.with_name(path.name + end).unlink(missing_ok=True)
        staged = path.with_name("staged.db")
        shutil.copyfile(copy, staged)
        os.replace(staged, path)
    elif how == "copied over the file":  # cp backup.db ledger.db: the same inode
        shutil.copyfile(copy, path)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("back", ["renamed into place", "copied over the file"])
@pytest.mark.parametrize(
    "how", ["garbage in the spans' pages", "cut in half", "text written over it"]
)
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(during=st.integers(1, 3))
def test_spans_written_to_a_damaged_file_wait_in_the_spool_until_a_copy_is_back(
    tmp_path_factory: pytest.TempPathFactory, how: str, back: str, during: int
) -> None:
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "l.db"
    url = f"sqlite:///{path}"
    running = Ledger(url)  # a gateway's, open all along
    # The whole spool in the first write that succeeds, however busy the machine: a 0.2 s
    # slice ran out after one of three files at 96 % busy (CI), the rest left to later writes.
    running.drain_slice = 60.0
    early, late, after = _spans(0, 40), _spans(100, during), _spans(200, 2)
    running.record(early)
    backup(running, folder / "copy.db")
    assert running.failing is None
    damage(path, how)
    for span in late:
        assert running.record([span]) == {span.id: Stored.SPOOLED}
    assert running.failing is not None and str(path) in running.failing
    assert "damaged" in running.failing and "spool" in running.failing
    restore(folder / "copy.db", path, back)
    assert running.record(after) == dict.fromkeys((s.id for s in after), Stored.COMMITTED)
    assert running.failing is None
    assert running.spool.pending() == []
    running.dispose()
    assert _ids(url) == {s.id for s in early + late + after}


def test_a_lock_held_past_the_wait_is_not_a_failing_ledger(tmp_path: Path) -> None:
    """Another writer holding the lock (a long ``ometer db rollup``) is no fault of the
    ledger: its spans are spooled, and ``/healthz`` keeps saying ok."""
    path = tmp_path / "l.db"
    running = Ledger(f"sqlite:///{path}", wait=0.2)
    running.record(_spans(0, 1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        (span,) = _spans(10, 1)
        assert running.record([span]) == {span.id: Stored.SPOOLED}
        assert running.failing is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    running.dispose()


def test_a_file_replaced_by_one_that_is_not_a_ledger_is_not_said_written_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Something else renamed over the ledger: each write found a new file at the path and
    said, every time, that it now wrote there, as it failed to. The failure is said (the
    spooling's line), and the switch once a ledger is there."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    running = Ledger(url)
    running.record(_spans(0, 2))
    staged = tmp_path / "other"
    staged.write_bytes(b"not a ledger\n" * 1000)
    os.replace(staged, path)
    late = _spans(100, 5)
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        for span in late:
            assert running.record([span]) == {span.id: Stored.SPOOLED}
        said = [r.getMessage() for r in caplog.records]
        assert [m for m in said if "removed or replaced" in m] == []
        (spooled,) = [m for m in said if "kept them in" in m]
        # SQLite took the old ledger's WAL, left beside it, for the file's pages, and wrote
        # the calls there: refused, with what to move aside.
        assert f"{path} is not a SQLite database: it is damaged or is not an ometer" in spooled
        assert f"move {path}-wal and {path}-shm aside" in spooled
        assert running.failing is not None and "is not a SQLite database" in running.failing
        caplog.clear()
        for file in (path, path.with_name("l.db-wal"), path.with_name("l.db-shm")):
            file.rename(file.with_name(f"aside-{file.name}"))
        (last,) = _spans(200, 1)
        assert running.record([last]) == {last.id: Stored.COMMITTED}  # a new ledger there
        said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "removed or replaced" in m] == [
        f"the ledger file {path} was removed or replaced while ometer had it open; ometer now "
        "writes to the file at that path"
    ]
    assert running.failing is None
    running.dispose()
    assert _ids(url) == {s.id for s in [*late, last]}


_RECORD = """
import sys
from ollama_meter.ledger import Ledger
from tests.factories import make_span
ledger = Ledger(sys.argv[1])
print(ledger.record([make_span()]).popitem()[1].value)
print(ledger.failing)
"""


def test_a_ledger_file_made_read_only_says_to_make_it_writable(tmp_path: Path) -> None:
    """``chmod a-w ledger.db``: the writes failed saying to give the file to this user
    (chown), which it is already. (Root without CAP_DAC_OVERRIDE is held to file modes as
    any other user is.)"""
    if os.geteuid() != 0:
        pytest.skip("dropping the override of file modes needs root (CI runs as root)")
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    Ledger(url).dispose()
    path.chmod(0o444)
    limited = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    done = subprocess.run(
        [*limited, sys.executable, "-c", _RECORD, url],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spooled, failing = done.stdout.splitlines()
    assert spooled == "spooled"
    assert failing.endswith(
        f"attempt to write a readonly database: {path} is read-only (mode 444), though this "
        f"user owns it: make it writable (chmod u+w {path}); spans wait in the spool meanwhile"
    ), failing


def test_a_ledger_file_emptied_under_a_running_process_says_so(tmp_path: Path) -> None:
    """``: > ledger.db`` (or a disk that lost it) under a running gateway: its writes failed
    saying the schema had been changed by hand. The file is empty: what it held is gone."""
    path = tmp_path / "l.db"
    running = Ledger(f"sqlite:///{path}")
    running.record(_spans(0, 3))
    damage(path, "emptied")
    late = _spans(100, 3)
    for span in late:
        assert running.record([span]) == {span.id: Stored.SPOOLED}
    assert running.failing is not None
    assert running.failing.endswith(
        f"the ledger file {path} is empty: what it held is gone. Restore it from a backup "
        "(`ometer db backup FILE` makes one), or run `ometer db upgrade` to make a new ledger "
        "of it; spans wait in the spool meanwhile"
    ), running.failing
    running.dispose()


@pytest.mark.parametrize("how", ["garbage in the spans' pages", "cut in half"])
def test_a_connection_in_use_as_a_write_finds_the_file_damaged_is_not_kept(
    tmp_path: Path, how: str
) -> None:
    """A connection in use (a report's read, a ``/healthz`` probe's) while another found the
    file damaged went back, once done, into the pool the ledger had disposed of, and stayed
    open there. In WAL mode it held a shared lock on the file: once a backup was copied over
    it (``cp``, a rollback-journal file), each new connection's switch to WAL waited the whole
    wait for it, holding every reader back meanwhile, and each write was spooled (CI: a
    gateway's ``/healthz`` did not answer within 10 s). It is closed once done."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    running = Ledger(url, wait=1)  # a gateway's, open all along; failing, it waits 1 s
    early, late, after = _spans(0, 3), _spans(100, 1), _spans(200, 2)
    running.record(early)
    backup(running, tmp_path / "copy.db")
    damage(path, how)
    with running.read():  # open as the write fails
        assert running.record(late) == {late[0].id: Stored.SPOOLED}
    restore(tmp_path / "copy.db", path, "copied over the file")
    assert running.zone() == "UTC"
    assert running.record(after) == dict.fromkeys((s.id for s in after), Stored.COMMITTED)
    assert running.failing is None
    assert running.spool.pending() == []
    running.dispose()
    assert _ids(url) == {s.id for s in early + late + after}
