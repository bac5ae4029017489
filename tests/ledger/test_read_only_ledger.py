"""A SQLite ledger in a folder no ``ometer`` may write (a read-only mount, a backup disk, a
folder of another user's): export, backup and reports say why they cannot open it and how
to read it anyway (a copy in a writable folder), and the copy they name reads.

Refused on purpose (``_why.read_only_folder``): SQLite opens a WAL ledger only with its
``-shm`` beside it, which it cannot make there; ``?immutable=1`` reads without one but trusts
that nothing writes the file, and ignores a ``-wal``'s transactions. They said "make it
writable, or give a ledger in a folder ometer may write", and not how to read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger
from tests._tmpfs import small_tmpfs
from tests.ledger.test_transfer import _spans

COMMANDS = [["db", "export"], ["db", "backup", "{copy}"], ["report", "--format", "csv"]]
OPENING = {"db backup": "the ledger at {path} failed"}
"""How each command begins the line (a backup names the ledger that failed it)."""


def _why(path: Path, why: str, fix: str) -> str:
    return (
        f"unable to open database file: the folder {path.parent} {why}, and SQLite opens a "
        "ledger, even to read it, only with its -wal and -shm files beside it, which it cannot "
        f"make there: to record into it, {fix}; to read it (export, backup, reports), copy it "
        f"to a folder ometer may write (cp {path} /tmp/ledger.db) and give the copy with --db "
        "sqlite:////tmp/ledger.db"
    )


def _said(command: list[str], path: Path, why: str) -> str:
    opening = OPENING.get(" ".join(command[:2]), "cannot open the ledger at {path}")
    return f"error: {opening.format(path=path)}: {why}"


@pytest.fixture
def read_only_ledger(tmp_path: Path) -> Iterator[Path]:
    """A ledger of 7 spans on a tmpfs then mounted read-only (refused to root as to anyone)."""
    with small_tmpfs(tmp_path, "8m") as disk:
        path = disk / "ledger.db"
        ledger = Ledger(f"sqlite:///{path}")
        ledger.record(_spans(7))
        ledger.dispose()  # the last connection gone: no -wal or -shm left beside it
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield path


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_ledger_on_a_read_only_mount_says_how_to_read_it(
    cli: Any, tmp_path: Path, read_only_ledger: Path, command: list[str]
) -> None:
    copy = tmp_path / "copy.db"
    args = [arg.format(copy=copy) for arg in command]
    done = cli(*args, "--db", f"sqlite:///{read_only_ledger}")
    why = _why(read_only_ledger, "is on a read-only file system", "remount it read-write")
    assert done.code == 1, done
    assert done.stderr.splitlines() == [_said(command, read_only_ledger, why)]
    assert sorted(os.listdir(read_only_ledger.parent)) == ["ledger.db"] and not copy.exists()
    # as it says: a copy in a writable folder reads (here not /tmp itself, for the tests' sake)
    shutil.copy(read_only_ledger, tmp_path / "ledger.db")
    done = cli("db", "export", "--db", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert done.code == 0 and len(done.stdout.splitlines()) == 7, done


OTHER = 64_203
"""A user who may read the ledger and its folder, and write neither."""


def test_a_ledger_in_a_folder_this_user_may_not_write_says_how_to_read_it(
    tmp_path: Path,
) -> None:
    """Folder 0555, file 0444: root ignores both, so the command runs as another uid."""
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="ometer-read-only-"))
    try:
        top.chmod(0o755)
        folder = top / "kept"
        folder.mkdir()
        path = folder / "ledger.db"
        ledger = Ledger(f"sqlite:///{path}")
        ledger.record(_spans(7))
        ledger.dispose()
        path.chmod(0o444)
        folder.chmod(0o555)
        command = [
            "setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", "--",
            sys.executable, "-m", "ollama_meter", "db", "export", "--db", f"sqlite:///{path}",
        ]  # fmt: skip
        env = {**os.environ, "HOME": "/nonexistent", "NO_COLOR": "1", "COLUMNS": "1000"}
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=120, env=env, cwd="/"
        )
        if "No module named" in done.stderr:
            pytest.skip(f"another user may not run {sys.executable} (it is under a private home)")
        why = (
            f"attempt to write a readonly database: this user, uid {OTHER}, may read the ledger "
            f"file {path} but not write it (owner root (uid 0), group root (gid 0), mode 444): "
            "run this as its owner, or give its group write (chmod g+w "
            f"{path} and its folder); no ometer has it open, and even reading it needs its -shm "
            "and -wal files, which this user would leave its own, keeping the owner from "
            "writing the ledger: a report works while a gateway has the ledger open, or on a "
            f"copy in a folder this user may write (cp {path} /tmp/ledger.db, then --db "
            "sqlite:////tmp/ledger.db)"
        )
        assert (done.returncode, done.stderr.splitlines()) == (
            1,
            [_said(["db", "export"], path, why)],
        )
        assert sorted(os.listdir(folder)) == ["ledger.db"]
    finally:
        shutil.rmtree(top)
