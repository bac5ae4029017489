"""Every file a command writes where the user said (``--out`` of report, perf and chargeback,
``db backup FILE``) that cannot be written is one line that names the file, says why and
what to do: exit non-zero, no traceback, nothing left half-written.

`ometer db backup nightly/ledger.db` with no folder ``nightly`` said only "No such file or
directory", and `--out` the same; a name with a line break in it was written, and showed
as two names in every listing.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import Ledger, close_ledgers
from tests._tmpfs import small_tmpfs
from tests.integrity.test_disk_full import fill
from tests.ledger.test_transfer import _spans

COMMANDS = {
    "report": (["report", "--format", "csv", "--out"], "'--out' / '-o'"),
    "chargeback": (["chargeback", "--month", "2026-11", "--out"], "'--out' / '-o'"),
    "db backup": (["db", "backup"], "'target'"),
}
"""Each command that writes a file the user names: its arguments before the file's name, and
the name the usage error gives the file's parameter."""

SEGMENTS = st.sampled_from(["dir", "file.txt", "missing", "new"])
"""The folders a path passes through: one that is there, a file, two that are not."""
CONTROL = st.sampled_from(["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\x00", "\x01"])
NAMES = st.builds(
    lambda head, bad, at: head[:at] + (bad or "") + head[at:],
    st.text("abcxyz-_.0123456789 éü", min_size=1, max_size=12).map(lambda s: f"n{s}"),
    st.none() | CONTROL,
    st.integers(0, 13),
)
"""The file's own name: never one of the segments' (it starts with ``n`` and is not "new"
alone), sometimes with a control character in it."""


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _expected(base: Path, parts: list[str], name: str, command: str) -> str | None:
    """What the command says for the file ``base/parts.../name``, or None when it writes it."""
    value = str(base.joinpath(*parts, name))
    _, param = COMMANDS[command]
    said = f"error: Invalid value for {param}: "
    help_hint = f" (see `ometer {command} --help`)\n"
    if bad := [c for c in name if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]:
        why = (
            f"{value!r} holds a control character ({bad[0]!r}), which no file name should: "
            "give the name without it"
        )
        return said + why + help_hint
    folder = base.joinpath(*parts)
    for at, part in enumerate(parts):  # only base/dir is a folder, base/file.txt a file
        if at == 0 and part == "file.txt":
            why = f"{base / part} is a file, not a folder: give a path whose folders are folders"
            return f"{said}cannot write {value}: {why}{help_hint}"
        if at > 0 or part != "dir":
            why = (
                f"the folder {folder} is not there: make it first (mkdir -p "
                f"{shlex.quote(str(folder))}), or give a file in a folder that is"
            )
            return f"{said}cannot write {value}: {why}{help_hint}"
    return None


@pytest.fixture
def ledger_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(3))
    yield url
    close_ledgers()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(sorted(COMMANDS)),
    parts=st.lists(SEGMENTS, max_size=3),
    name=NAMES,
)
@example(command="db backup", parts=["missing"], name="nightly.db")
@example(command="report", parts=["file.txt", "missing"], name="n.csv")
@example(command="chargeback", parts=["dir"], name="n\r.csv")
@example(command="db backup", parts=[], name="na\nb.db")
@example(command="chargeback", parts=["dir", "dir"], name="n  ")  # CI run 133: spaces kept
def test_a_file_the_user_names_is_written_or_one_line_says_why(
    cli: Any, tmp_path: Path, ledger_url: str, command: str, parts: list[str], name: str
) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    (base / "dir").mkdir()
    (base / "file.txt").write_text("kept\n")
    before = _files(base)
    target = base.joinpath(*parts, name)
    args, _ = COMMANDS[command]
    done = cli(*args, str(target), "--db", ledger_url)
    expected = _expected(base, parts, name, command)
    if expected is None:
        assert done.code == 0, done.stderr
        assert _files(base) == sorted([*before, str(target.relative_to(base))])
    else:
        assert (done.code, done.stderr) == (2, expected)
        assert _files(base) == before


def _mounted(folder: Path) -> Iterator[Path]:
    with small_tmpfs(folder, "1m") as disk:
        yield disk


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted read-only (a backup disk mounted ro by mistake, a container's ro
    volume): refused to root as to anyone."""
    for disk in _mounted(tmp_path):
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield disk


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_file_on_a_read_only_disk_says_so(
    cli: Any, ledger_url: str, read_only_disk: Path, command: str
) -> None:
    target = read_only_disk / "copy.db"
    args, _ = COMMANDS[command]
    done = cli(*args, str(target), "--db", ledger_url)
    why = (
        f"{read_only_disk} is on a read-only file system: give a file on a disk that can be written"
    )
    assert (done.code, done.stderr) == (
        1,
        f"error: {_cannot(command, ledger_url, target)}: {why}\n",
    )
    assert os.listdir(read_only_disk) == []


def _cannot(command: str, ledger_url: str, target: Path) -> str:
    if command == "db backup":
        return f"could not back up {ledger_url.removeprefix('sqlite:///')} to {target}"
    return f"cannot write {target}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_file_on_a_full_disk_says_so_and_leaves_nothing(
    cli: Any, tmp_path: Path, command: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(200))
    for disk in _mounted(tmp_path):
        filler = fill(disk)
        target = disk / "copy.db"
        args, _ = COMMANDS[command]
        done = cli(*args, str(target), "--db", url)
        why = (
            f"the disk that holds {disk} is full, and nothing was written: free some space and "
            "run again, or give a file on another disk"
        )
        said = done.stderr.splitlines()[-1]  # after chargeback's warning of unpriced calls
        assert (done.code, said) == (1, f"error: {_cannot(command, url, target)}: {why}")
        assert sorted(disk.iterdir()) == [filler]
    close_ledgers()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder whatever its mode")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_file_in_a_folder_this_user_may_not_write_says_so(
    cli: Any, tmp_path: Path, ledger_url: str, command: str
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    kept.chmod(0o555)
    target = kept / "copy.db"
    args, _ = COMMANDS[command]
    try:
        done = cli(*args, str(target), "--db", ledger_url)
    finally:
        kept.chmod(0o755)
    why = (
        f"this user (uid {os.geteuid()}) may not make or replace files in {kept} (its "
        "permissions): give a file in a folder this user may write, or run this as a user who may"
    )
    assert (done.code, done.stderr) == (
        1,
        f"error: {_cannot(command, ledger_url, target)}: {why}\n",
    )
    assert os.listdir(kept) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("letter", ["a", "é", "\udcff"])  # 1 byte, 2 bytes, one not UTF-8
def test_a_name_as_long_as_the_folder_takes_is_written(
    cli: Any, tmp_path: Path, ledger_url: str, command: str, letter: str
) -> None:
    """A name of up to 255 bytes is a file's name (ext4, XFS, tmpfs...): one of 233 to 255
    was refused as 'longer than the file system takes' by report and chargeback, whose temp
    file beside it had 22 bytes more (db backup's was cut to fit)."""
    size = len(os.fsencode(letter))
    name = letter * ((255 - 4) // size) + ".csv"
    name = name[: len(name) - (len(os.fsencode(name)) - 255) // size]
    assert 254 <= len(os.fsencode(name)) <= 255
    folder = tmp_path / "out"
    folder.mkdir()
    args, _ = COMMANDS[command]
    done = cli(*args, str(folder / name), "--db", ledger_url)
    assert done.code == 0, done.stderr
    assert os.listdir(folder) == [name]


HELD_AT_SYNC = """
import os, sys, time
folder, synced = os.path.realpath(sys.argv.pop(1)), os.fsync

def fsync(fd):
    if os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")) == folder:
        while True:  # a disk that never ends the write: the process is killed in it
            time.sleep(60)
    synced(fd)

os.fsync = fsync
sys.argv[0] = "ometer"
from ollama_meter.__main__ import main

main()
"""
"""``ometer ARGS`` as the command line runs it, held for good at its sync of any file it
writes in the folder named first (a disk that does not finish the write): a ``kill -9``
comes while its temp file is beside the target, every time."""


def _killed_mid_write(args: list[str], target: Path, old: str) -> list[str]:
    """Run ``ometer ARGS``, held at the sync of its temp file beside ``target`` (holding
    ``old``), and ``kill -9`` it once that file is there: the temp files it left. Killed at
    whatever moment came, it wrote its temp file and renamed it within milliseconds: one run
    in 10 to 25 was killed in them, each run a report's seconds."""
    target.write_text(old)
    run = subprocess.Popen(
        [sys.executable, "-c", HELD_AT_SYNC, str(target.parent), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120  # a bound for a hang, not a timing
    while not list(target.parent.glob(f".{target.name}.*.tmp")):
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            _, stderr = run.communicate()
            pytest.fail(f"the run wrote no temp file (exit {run.returncode}): {stderr!r}")
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    assert target.read_text() == old
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*.tmp"))


def test_a_report_killed_while_it_writes_leaves_the_old_file_and_the_next_run_sweeps_its_temp(
    tmp_path: Path,
) -> None:
    """``kill -9`` of a report or bill while it wrote (cron's timeout, the OOM killer) left
    the old file whole, as it should, and beside it a hidden temp file of the new one, half
    written, for ever: one more each time. The next write of that file now removes those
    whose process is gone and that nobody wrote for an hour (as ``db backup`` removes its
    own), and no other file."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(3_000))
    close_ledgers()
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "spend.json"
    args = ["report", "--db", url, "--period", "2026-11", "--by", "department,user,model,day",
            "--format", "json", "--out", str(target)]  # fmt: skip
    left = _killed_mid_write(args, target, "the old report\n")
    assert len(left) == 1
    dead = subprocess.Popen(["true"])  # a pid that ran and ended
    dead.wait()
    names = {
        "recent": f".spend.json.{dead.pid}.ffffffff.tmp",  # written a moment ago
        "alive": f".spend.json.{os.getpid()}.00000000.tmp",  # a run still writing
        "other_target": f".other.json.{dead.pid}.0a1b2c3d.tmp",
        "its_start": f".spend.{dead.pid}.0a1b2c3d.tmp",  # spend's, not cut short from spend.json
        "not_a_temp": ".spend.json.notes.tmp",
        "not_random": f".spend.json.{dead.pid}.notes.tmp",
    }
    for name in names.values():
        (folder / name).write_bytes(b"x")
    hour_ago = time.time() - 3700
    for name in [*left, *(names[k] for k in names if k != "recent")]:
        os.utime(folder / name, (hour_ago, hour_ago))
    done = subprocess.run(
        [sys.executable, "-m", "ollama_meter", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith("[")
    assert sorted(p.name for p in folder.glob(".*")) == sorted(names.values())


def test_the_temp_file_of_a_long_name_is_swept_as_cut_short(tmp_path: Path) -> None:
    """A name near 255 bytes has its temp file's name cut short (temp_beside): a killed
    write's is swept by the next write of that name, and not by that of another name (one
    that begins as the cut name does may sweep it too: it is a dead process's all the same)."""
    from ollama_meter._paths import NAME_MAX, replace_file

    folder = tmp_path / "out"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    mark = f".{dead.pid}.0a1b2c3d.tmp"
    name, other = "a" + "é" * 120 + ".csv", "b" + "é" * 120 + ".csv"
    cut = os.fsdecode(os.fsencode(name)[: NAME_MAX - 1 - len(mark)])
    left = folder / f".{cut}{mark}"
    left.write_bytes(b"half")
    hour_ago = time.time() - 3700
    os.utime(left, (hour_ago, hour_ago))
    replace_file(folder / other, "b\n")
    assert left.exists()
    replace_file(folder / name, "a\n")
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, other])
