"""Output that cannot be written: a full disk is one clear line, a closed pipe a quiet exit 1.

Real processes: what is at stake is the interpreter's own stdout and its last flush at exit.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger
from tests.factories import make_span

_LAST_MONTH = f"{datetime.now(UTC).replace(day=1) - timedelta(days=1):%Y-%m}"
COMMANDS = (["db", "export"], ["log", "--json", "--limit", "500"], ["report", "--format", "csv"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A ledger with enough spans that no command's output fits a pipe's buffer: this month's
    for report and log, last month's for chargeback."""
    url = f"sqlite:///{tmp_path_factory.mktemp('out') / 'l.db'}"
    now = datetime.now(UTC)  # an hour ago, but in this month (UTC, as the commands read it)
    at = max(now - timedelta(hours=1), now.replace(day=1, hour=0, minute=0, second=0))
    before = datetime.fromisoformat(f"{_LAST_MONTH}-15T12:00:00+00:00")
    Ledger(url).record(
        [
            make_span(
                started_at=moment + timedelta(milliseconds=n), department=f"d{n}", cost_total=n + 1
            )
            for moment in (at, before)
            for n in range(3_000)  # 120 KiB of report or bill, past the pipe's 64
        ]
    )
    return {**os.environ, "OMETER_DB_URL": url, "OMETER_TIMEZONE": "UTC", "NO_COLOR": "1"}


def _ometer(args: list[str], env: dict[str, str], **streams: object) -> subprocess.Popen[bytes]:
    code = "import sys; sys.argv[0] = 'ometer'; from ollama_meter.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **streams)  # type: ignore[call-overload,no-any-return]


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs the /dev/full device")
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_full_disk_is_one_line_and_exit_1(args: list[str], env: dict[str, str]) -> None:
    with open("/dev/full", "wb") as full:
        proc = _ometer(args, env, stdout=full, stderr=subprocess.PIPE)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stderr.decode().splitlines()[-1] == (
        "error: cannot write the output: No space left on device; free some space and run again"
    )


@pytest.mark.parametrize("args", [*COMMANDS, ["chargeback", "--month", _LAST_MONTH]], ids=" ".join)
def test_a_pipe_closed_early_ends_the_command_quietly(args: list[str], env: dict[str, str]) -> None:
    """``ometer db export | head -1``: no message, no traceback; exit 1, as not all was written
    (a pipeline under ``set -o pipefail`` fails, as it does with ``cat`` or ``grep``).

    A command that writes its whole output at once (report, log --json, chargeback: a bill
    piped to an upload that dies) exited 0 with its output cut at the pipe's 64 KiB: the
    kernel takes what fits when the reader goes, and Python's buffered write returned that
    short count as if all was written. Each write now goes on until all is written, so the
    rest meets the closed pipe."""
    proc = _ometer(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), stderr) == (1, "")
    assert first.strip()


def test_an_interrupted_backup_or_out_file_leaves_no_temp_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM (SystemExit) during `db backup` or `--out` left the hidden temp
    copy (`.ledger.db.partial`, the whole ledger's size) beside the target: only an OSError
    removed it."""
    from ollama_meter.cli._common import write_output
    from ollama_meter.ledger import backup

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record([make_span()])
    target = tmp_path / "copies"
    target.mkdir()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backup(ledger, target / "copy.db", progress=interrupt)
    monkeypatch.setattr(Path, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_output("a,b\n", target / "report.csv")
    assert list(target.iterdir()) == []


def test_out_into_a_pipe_or_through_a_link_leaves_them_what_they_are(
    cli: Any, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out /dev/stdout`, a FIFO or a link: a temp file renamed over it would replace the
    pipe or device itself (`db backup /dev/null` as root, for everyone). A pipe is written
    into, a link followed; a backup, which must be a file, is refused onto a pipe."""
    monkeypatch.setenv("OMETER_DB_URL", env["OMETER_DB_URL"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    done = cli("report", "--format", "csv", "--out", str(fifo))
    reader.join(10)
    shown = cli("report", "--format", "csv").stdout
    assert done.code == 0 and received == [shown.encode()] and fifo.is_fifo()

    real = tmp_path / "reports" / "month.csv"
    real.parent.mkdir()
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    assert cli("report", "--format", "csv", "--out", str(link)).code == 0
    assert link.is_symlink() and real.read_text() == shown

    refused = cli("db", "backup", str(fifo))
    assert refused.code != 0 and fifo.is_fifo()
    assert (
        refused.stderr
        == f"error: {fifo} is a device or pipe, not a file: a backup is a SQLite file; give a file's path\n"
    )
    # through the link to the report: refused, a backup replaces only an earlier backup
    assert cli("db", "backup", str(link)).code == 2 and real.read_text() == shown
    copy = tmp_path / "backups" / "ledger.db"
    copy.parent.mkdir()
    latest = tmp_path / "latest.db"
    latest.symlink_to(copy)
    for _ in range(2):  # made through the link, then replaced through it
        assert cli("db", "backup", str(latest)).code == 0
        assert latest.is_symlink() and copy.read_bytes().startswith(b"SQLite format 3")


@pytest.mark.parametrize("out", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
@pytest.mark.parametrize(
    "args",
    [["report", "--format", "csv"], ["chargeback", "--month", "2026-11", "--fixed-cost", "9"]],
    ids=" ".join,
)
def test_out_to_its_own_stdout_in_a_pipe_is_written_into_it(
    out: str, args: list[str], env: dict[str, str]
) -> None:
    """`ometer chargeback ... --out /dev/stdout | gzip`: the link names the process's pipe
    (``pipe:[123]``, no file at all), which was taken for a file not there yet, so a temp
    file was made beside it in /proc/self/fd: 'cannot write /dev/stdout: No such file or
    directory', exit 1. What the link names (a pipe, a socket, a terminal) is written into."""
    shown = _shown(tuple(args), tuple(sorted(env.items())), f"{datetime.now(UTC):%Y-%m}")
    done = subprocess.run(
        [sys.executable, "-c", _MAIN, *args, "--out", out], env=env, capture_output=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, shown.stderr)
    assert done.stdout == shown.stdout and shown.stdout.count(b"\n") > 1


_MAIN = "import sys; sys.argv[0] = 'ometer'; from ollama_meter.cli import main; main()"


@functools.cache
def _shown(
    args: tuple[str, ...], env: tuple[tuple[str, str], ...], month: str
) -> subprocess.CompletedProcess[bytes]:
    """What ``args`` print without ``--out``, run once for the three ways of naming stdout:
    the module's ledger does not change, and ``month`` (this one) is what ``report`` shows."""
    return subprocess.run(
        [sys.executable, "-c", _MAIN, *args], env=dict(env), capture_output=True, check=False
    )


def _closed(fd: int, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """``ometer ARGS`` started with ``fd`` closed (``>&-``, ``<&-``): Python gives it no stream."""
    code = "import sys; sys.argv[0] = 'ometer'; from ollama_meter.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, timeout=60,
        check=False, preexec_fn=lambda: os.close(fd),
    )  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_closed_stdout_is_one_line_and_exit_1(args: list[str], env: dict[str, str]) -> None:
    """``ometer db export >&-`` (a cron line, a service with no stdout): there is no
    sys.stdout at all, and every command ended as 'unexpected AttributeError ... a bug'."""
    done = _closed(1, args, env)
    assert (done.returncode, done.stderr.decode()) == (
        1,
        "error: cannot write the output: stdout is closed; give the command somewhere to "
        "write (> FILE)\n",
    )


def test_an_import_from_a_closed_stdin_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    done = _closed(0, ["db", "import", "-"], env)
    assert (done.returncode, done.stderr.decode()) == (
        2,
        "error: stdin is closed: give the export on it (ometer db import - < FILE) or its "
        "file name (ometer db import FILE)\n",
    )


def test_an_import_from_a_terminal_says_to_pipe_the_export_rather_than_wait(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``ometer db import -`` typed at a prompt waited in silence for spans nobody types."""
    primary, secondary = os.openpty()
    terminal = open(secondary, encoding="utf-8")  # noqa: SIM115  # closed below
    try:
        monkeypatch.setattr(sys, "stdin", terminal)
        result = cli("db", "import", "-", "--db", f"sqlite:///{tmp_path / 'l.db'}")
    finally:
        terminal.close()
        os.close(primary)
    assert (result.code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: stdin is a terminal: pipe the export in (ometer db export | ometer db import "
        "-, or ometer db import - < FILE), or give its file name (ometer db import FILE)\n"
    )


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
@pytest.mark.parametrize(
    "args",
    [
        ["report", "--format", "csv"],
        ["perf", "--format", "json"],
        ["chargeback", "--month", "2026-11", "--fixed-cost", "9"],
        ["chargeback", "--month", "2026-11", "--format", "html"],
    ],
    ids=" ".join,
)
def test_an_out_file_written_again_keeps_who_may_read_it(
    cli: Any, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    args: list[str], mode: int,
) -> None:  # fmt: skip
    """The bill kept for finance alone (`chmod 600 cb.csv`), written again by the monthly job:
    the temp file renamed over it was made 0644 (the umask's), so every user of the machine
    could read every department's spend from then on. The file it replaces gives its mode;
    a new file has the umask's, as any file a command makes."""
    monkeypatch.setenv("OMETER_DB_URL", env["OMETER_DB_URL"])
    kept, new = tmp_path / "kept.out", tmp_path / "new.out"
    kept.write_text("last month\n")
    kept.chmod(mode)
    link = tmp_path / "latest.out"
    link.symlink_to(kept)
    for target in (kept, link, new):
        done = cli(*args, "--out", str(target))
        assert done.code == 0, done.stderr
        assert kept.read_text() != "last month\n"
    assert stat.S_IMODE(kept.stat().st_mode) == mode
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_out_file_is_on_the_disk_before_its_name_is(
    cli: Any, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "The file is written atomically": renamed into place, but never synced, so a power cut
    just after (the bill written at 06:00, the machine lost at 06:01) could leave the new name
    on an empty file on ext4 and XFS, where the old bill was whole. The temp file's bytes are
    synced before the rename, and the folder after it, as `db backup` does."""
    monkeypatch.setenv("OMETER_DB_URL", env["OMETER_DB_URL"])
    target = tmp_path / "cb.csv"
    synced: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append(("folder" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    def replace(self: Path, to: Any) -> Path:
        synced.append(("rename", self.stat().st_ino))
        return real_replace(self, to)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    done = cli("chargeback", "--month", "2026-11", "--fixed-cost", "9", "--out", str(target))
    assert done.code == 0, done.stderr
    inode = target.stat().st_ino
    assert synced == [("file", inode), ("rename", inode), ("folder", tmp_path.stat().st_ino)]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_out_file_root_writes_again_stays_its_owners(
    cli: Any, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root's cron job writing the bill finance's user keeps: the file renamed over it was
    root's, and finance could no longer change or remove its own file's copy."""
    monkeypatch.setenv("OMETER_DB_URL", env["OMETER_DB_URL"])
    kept = tmp_path / "cb.csv"
    kept.write_text("last month\n")
    kept.chmod(0o600)
    os.chown(kept, 65534, 65534)
    done = cli("chargeback", "--month", "2026-11", "--fixed-cost", "9", "--out", str(kept))
    assert done.code == 0, done.stderr
    info = kept.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o600)
    assert kept.read_text().startswith("month,tenant,")


@pytest.mark.parametrize("which", ["the ledger", "its wal", "another ledger", "a backup"])
@pytest.mark.parametrize(
    "args",
    [["report", "--format", "csv"], ["chargeback", "--month", "2026-11", "--format", "html"]],
    ids=" ".join,
)
def test_out_never_replaces_a_database(
    cli: Any, tmp_path: Path, args: list[str], which: str
) -> None:
    """`ometer report --format csv --out ledger.db` (a tab completion one name off, the
    arguments of `db backup` in mind) renamed the CSV over the live ledger: every span gone,
    and the gateways writing to a file no name led to. A database of any kind is refused and
    left as it is: a report is text, and no report is worth a database."""
    ledger = tmp_path / "ledger.db"
    url = f"sqlite:///{ledger}"
    Ledger(url).record([make_span(started_at=datetime(2026, 11, 3, tzinfo=UTC))])
    other = tmp_path / "other.db"
    Ledger(f"sqlite:///{other}").record([make_span()])
    copy = tmp_path / "nightly.db"
    assert cli("db", "backup", str(copy), "--db", url).code == 0
    reader = sqlite3.connect(ledger)  # a gateway's: the WAL stays while it is open
    reader.execute("SELECT count(*) FROM spans").fetchone()
    target = {
        "the ledger": ledger,
        "its wal": Path(f"{ledger}-wal"),
        "another ledger": other,
        "a backup": copy,
    }[which]
    assert target.exists()
    before = target.read_bytes()
    done = cli(*args, "--out", str(target), "--db", url)
    reader.close()
    assert (done.code, done.stdout) == (2, ""), done.stderr
    assert done.stderr.startswith(
        f"error: Invalid value for '--out' / '-o': '{target}' is a SQLite database"
    ), done.stderr  # said before the ledger is read: nothing else is said
    assert done.stderr.endswith(
        "--out replaces only a file that is no database: give another file (see `ometer "
        f"{args[0]} --help`)\n"
    ), done.stderr
    assert done.stderr.count("\n") == 1
    if which != "its wal":  # the gateway's own checkpoint may change that one meanwhile
        assert target.read_bytes() == before
    assert Ledger(url).count() == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_out_into_a_pipe_whose_reader_goes_mid_write_exits_1(
    env: dict[str, str], tmp_path: Path
) -> None:
    """``--out FIFO`` (or ``/dev/stdout`` in a pipe) is written into: a reader that went after
    the first line left the report cut at the pipe's 64 KiB, and exit code 0."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = _ometer(["report", "--format", "csv", "--out", str(fifo)], env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    with fifo.open("rb") as reader:
        first = reader.readline()
    stderr = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), first.startswith(b"department,")) == (1, True)
    assert stderr.startswith(f"error: cannot write {fifo}: "), stderr


def test_a_table_whose_reader_goes_mid_write_exits_1(env: dict[str, str]) -> None:
    """``ometer report | head``: a table of more than the pipe's 64 KiB was cut there with
    exit code 0, as data was."""
    proc = _ometer(["report"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), stderr) == (1, "")
    assert first.startswith(b"spend ")
