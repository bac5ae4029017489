"""A disk with bytes to spare and no file to spare: every inode of its file system taken (many
small files: a mail spool, a cache, a build's objects), so a new file there fails with ENOSPC
while ``df -h`` shows room.

SQLite says only "unable to open database file" when it cannot make the ``-wal``, ``-shm``
or ``-journal`` beside a database, and ometer read that as a matter of permissions ("give
them to this user (chown)", to root, who owns them). A backup's copy was in WAL mode while
it was checked (the backup API copies the ledger's header, WAL mode's bytes too), so it
needed two files beside it that a backup never keeps, and a backup killed while it checked
its copy left them there for good: the next backup swept the copy and its journal, not them.

The disks are real tmpfs mounts with a few inodes (``tests/_tmpfs.py``; CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, backup, close_ledgers
from tests._tmpfs import small_tmpfs
from tests.ledger.test_transfer import _spans


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(300))
    try:
        yield ledger
    finally:
        close_ledgers()


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_backup_needs_a_file_for_its_copy_and_one_for_its_journal_and_leaves_only_the_copy(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Two files to spare (the copy, and the rollback journal SQLite writes beside it): the
    copy is made, in rollback mode from its first read on, and nothing else is left."""
    with small_tmpfs(tmp_path, "32m", inodes=3) as disk:  # its root folder and two files
        target = disk / "nightly.db"
        backup(ledger, target)
        assert [p.name for p in disk.iterdir()] == ["nightly.db"]
        assert target.read_bytes()[18:20] == b"\x01\x01"  # rollback mode: one file, no WAL
        (tmp_path / "copy.db").write_bytes(target.read_bytes())
        assert Ledger(f"sqlite:///{tmp_path / 'copy.db'}").count() == ledger.count() == 300


def test_a_backup_onto_a_disk_with_no_file_to_spare_says_so_and_keeps_the_last_copy(
    cli: Any, ledger: Ledger, tmp_path: Path
) -> None:
    """One file to spare (the copy's; none for its journal): one line saying the disk is full,
    last night's copy as it was, and nothing beside it."""
    with small_tmpfs(tmp_path, "32m", inodes=3) as disk:
        target = disk / "nightly.db"
        backup(ledger, target)
        ledger.record(_spans(301)[300:])
        before = _files(disk)
        result = cli("db", "backup", str(target), "--db", ledger.url)
        assert (result.code, result.stderr) == (
            1,
            f"error: could not back up {ledger.path} to {target}: the disk that holds {disk} "
            "is full, and nothing was written: free some space and run again, or give a file "
            "on another disk\n",
        )
        assert _files(disk) == before


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--period", "2026-11"],
        ["chargeback", "--month", "2026-11"],
        ["db", "export"],
        ["db", "prune", "--keep-days", "5"],
        ["db", "upgrade"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_ledger_on_a_disk_with_no_file_to_spare_says_so_not_to_give_it_to_its_owner(
    cli: Any, ledger: Ledger, tmp_path: Path, args: list[str]
) -> None:
    """Every process closed the ledger, so SQLite removed its ``-wal`` and ``-shm``; the
    next to open it cannot make them again."""
    with small_tmpfs(tmp_path, "32m", inodes=2) as disk:  # its root folder and the ledger
        moved = disk / "ledger.db"
        backup(ledger, tmp_path / "copy.db")
        moved.write_bytes((tmp_path / "copy.db").read_bytes())
        result = cli(*args, "--db", f"sqlite:///{moved}")
        assert result.code == 1
        full = (
            f"unable to open database file: the disk that holds {disk} has no room for another "
            "file (each of its 2 inodes is in use, though it may have bytes to spare): remove "
            "files there, or give the ledger a disk with inodes free\n"
        )
        assert result.stderr in (  # `db upgrade` opens it unmigrated first
            f"error: cannot open the ledger at {moved}: {full}",
            f"error: the ledger at {moved} failed: {full}",
        )
        assert [p.name for p in disk.iterdir()] == ["ledger.db"]


def test_the_files_beside_a_copy_that_a_killed_backup_left_are_swept(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An earlier ometer's backup killed while it checked its copy (in WAL mode then) left the
    copy's ``-wal`` and ``-shm`` beside it: the next backup to that file sweeps them as it
    sweeps the copy, once their process is gone and they have not been written for an hour."""
    dead = subprocess.Popen(["true"])  # a pid that ran and ended
    dead.wait()
    hour_ago = time.time() - 3700
    killed = f".nightly.db.{dead.pid}.0a1b2c3d.partial"
    left = [killed, f"{killed}-wal", f"{killed}-shm", f"{killed}-journal"]
    recent = f".nightly.db.{dead.pid}.ffffffff.partial-wal"  # written a moment ago
    for name in (*left, recent):
        (tmp_path / name).write_bytes(b"x")
    for name in left:
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    backup(ledger, tmp_path / "nightly.db")
    assert sorted(p.name for p in tmp_path.glob(".*")) == [recent]
