"""What `ometer db backup FILE` may write over, and what upkeep commands do with a ledger that
is not there."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, close_ledgers
from tests.ledger.test_transfer import _spans


def test_a_backup_onto_a_stopped_ledger_is_refused_and_the_ledger_keeps_its_spans(
    cli: Any, tmp_path: Path
) -> None:
    """`ometer db backup prod.db --db dev.db` (the arguments the wrong way round) was refused
    only while a process had prod.db open (its WAL beside it): with the gateways stopped, the
    copy of dev.db was renamed over prod.db, exit 0 and 'backed up', and every span prod.db
    held was gone. A file in WAL mode is a database in use (a ledger), never a backup."""
    prod, dev = tmp_path / "prod.db", tmp_path / "dev.db"
    gateway = Ledger(f"sqlite:///{prod}")
    gateway.record(_spans(20))
    gateway.dispose()  # stopped: SQLite removes the WAL with its last connection
    assert not Path(f"{prod}-wal").exists()
    Ledger(f"sqlite:///{dev}").record(_spans(3, seed=5))
    before = prod.read_bytes()
    done = cli("db", "backup", str(prod), "--db", f"sqlite:///{dev}")
    assert done.code == 2, done.stdout
    assert done.stderr == (
        f"error: {prod} is a ledger (a SQLite database in WAL mode, as ometer leaves every "
        "ledger it opens), not a backup: a backup replaces only an earlier backup. Give another "
        "file, or move it aside first\n"
    )
    assert prod.read_bytes() == before and not list(tmp_path.glob(".*partial*"))
    assert Ledger(f"sqlite:///{prod}").count() == 20


@pytest.mark.parametrize(
    "content",
    [b"model = 'llama3.1:8b'\n", b"SQLite format 3", b"\x00" * 4096],
    ids=["text", "a header alone", "zeros"],
)
def test_a_backup_onto_a_file_that_is_no_database_is_refused_and_left(
    cli: Any, tmp_path: Path, content: bytes
) -> None:
    """`ometer db backup prices.toml` (a file mistaken for the source, or a tab completion one
    name off) replaced the file with a copy of the ledger, exit 0."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(db).record(_spans(3))
    target = tmp_path / "prices.toml"
    target.write_bytes(content)
    done = cli("db", "backup", str(target), "--db", db)
    assert done.code == 2, done.stdout
    assert done.stderr == (
        f"error: {target} is there and is not a SQLite database (a backup): a backup replaces "
        "only an earlier backup. Give another file, or move it aside first\n"
    )
    assert target.read_bytes() == content and not list(tmp_path.glob(".*partial*"))


def test_a_backup_to_dash_is_refused_not_a_file_named_dash(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ometer db backup - > copy.db`, as `--out -` and `db import -` take it, wrote a file
    named `-` in the current folder (exit 0, 'backed up ... to -') and nothing to stdout: a
    backup is a SQLite file, which SQLite writes in place, never a stream."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(db).record(_spans(3))
    monkeypatch.chdir(tmp_path)
    done = cli("db", "backup", "-", "--db", db)
    assert done.code == 2, done.stdout
    assert done.stderr == (
        "error: Invalid value for 'target': '-' is stdout, and a backup is a SQLite file, "
        "which cannot be written to a stream: give a file's path (./- for a file named -) "
        "(see `ometer db backup --help`)\n"
    )
    assert done.stdout == "" and not (tmp_path / "-").exists()
    assert cli("db", "backup", "./-", "--db", db).code == 0
    assert Ledger(f"sqlite:///{tmp_path / '-'}").count() == 3


def test_a_backup_replaces_an_earlier_backup_and_an_empty_file(cli: Any, tmp_path: Path) -> None:
    """The nightly job writes over last night's copy; `mktemp` makes an empty file first."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(db)
    ledger.record(_spans(3))
    target, empty = tmp_path / "nightly.db", tmp_path / "tmp.XXXX"
    empty.touch()
    for name in (target, target, empty):
        done = cli("db", "backup", str(name), "--db", db)
        assert done.code == 0, done.stderr
        ledger.record(_spans(5)[3:])
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert Ledger(f"sqlite:///{target}").count() == 5


def test_a_rollup_of_a_ledger_that_is_not_there_makes_none(cli: Any, tmp_path: Path) -> None:
    """`ometer db rollup --db typo.db` made an empty ledger there and said 'rolled up 0
    span(s)', exit 0, where every other upkeep command says there is no ledger."""
    typo = tmp_path / "typo.db"
    for args in (["db", "rollup"], ["db", "rollup", "--zone", "Europe/Berlin"]):
        done = cli(*args, "--db", f"sqlite:///{typo}")
        assert done.code == 2, done.stdout
        assert done.stderr.startswith(f"error: no ledger at {typo}: nothing was ever recorded")
        assert not typo.exists() and not list(tmp_path.glob("typo.db*"))


def test_a_backup_through_a_link_to_a_file_not_there_yet_writes_that_file(
    cli: Any, tmp_path: Path
) -> None:
    """`/srv/backup/latest.db -> ledger-2026-12-04.db`, made before the copy it names: the
    backup was refused as 'a device or pipe, not a file'."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(db).record(_spans(3))
    (tmp_path / "kept").mkdir()
    link, named = tmp_path / "latest.db", tmp_path / "kept" / "ledger-2026-12-04.db"
    link.symlink_to(named)
    done = cli("db", "backup", str(link), "--db", db)
    assert done.code == 0, done.stderr
    assert link.is_symlink() and link.readlink() == named
    assert Ledger(f"sqlite:///{named}").count() == 3
    gone = tmp_path / "gone.db"
    gone.symlink_to(tmp_path / "no-folder" / "x.db")
    done = cli("db", "backup", str(gone), "--db", db)
    assert (done.code, done.stderr) == (
        1,
        f"error: could not back up {tmp_path / 'ledger.db'} to {tmp_path / 'no-folder' / 'x.db'}: "
        f"the folder {tmp_path / 'no-folder'} is not there: make it first (mkdir -p "
        f"{tmp_path / 'no-folder'}), or give a file in a folder that is\n",
    )


def _damage_a_page_of_spans(path: Path) -> None:
    """Overwrite one leaf page of the spans table, as a failing disk or a copy torn by a
    power cut leaves it: the ledger still opens, and every read that misses that page works."""
    with sqlite3.connect(path) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [row[0] for row in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'spans' AND pagetype = 'leaf' ORDER BY pageno"
        )]  # fmt: skip
    assert len(pages) > 4
    with path.open("r+b") as file:
        file.seek((pages[len(pages) // 2] - 1) * size)
        file.write(b"\xff" * size)


def test_a_backup_of_a_damaged_ledger_is_refused_and_the_earlier_backup_kept(
    cli: Any, tmp_path: Path
) -> None:
    """A ledger with one damaged page of spans still opened, and `ometer db backup` copied it
    page for page: exit 0, 'backed up', and the damaged copy replaced last night's good one.
    A nightly job rotating its copies kept nothing but damaged ones, and nobody was told."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(600))
    target = tmp_path / "nightly.db"
    assert cli("db", "backup", str(target), "--db", f"sqlite:///{path}").code == 0
    good = target.read_bytes()
    ledger.dispose()
    close_ledgers()  # the backup's own, whose page cache would not see the damage
    _damage_a_page_of_spans(path)
    done = cli("db", "backup", str(target), "--db", f"sqlite:///{path}")
    assert (done.code, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith(
        f"error: the ledger at {path} is damaged (SQLite's quick_check: "
    ), done.stderr
    assert done.stderr.endswith(
        f"): the copy is not kept, and {target} is left as it was. Keep the ledger as it is "
        f"(stop the gateways), and recover what it holds: sqlite3 {path} .recover | sqlite3 "
        "recovered.db\n"
    ), done.stderr
    assert done.stderr.count("\n") == 1
    assert target.read_bytes() == good and not list(tmp_path.glob(".*partial*"))


def test_a_backup_taken_while_the_rollups_are_cut_again_is_finished_by_its_first_opener(
    cli: Any, tmp_path: Path
) -> None:
    """A backup taken during `ometer db rollup --zone` named the process rebuilding the
    ledger, alive, as the copy's rebuilder: `ometer report --db sqlite:///copy.db` waited for
    that rebuild of the other file to end (minutes on a big ledger; ten with the process
    gone elsewhere) before rebuilding the copy itself. It rebuilds the copy at once."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from ollama_meter.ledger._meta import set_meta

    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(30))
    with ledger.write() as conn:  # as `db rollup --zone` leaves it while it runs (this process)
        set_meta(conn, "rollups", "stale")
        set_meta(conn, "rebuilding", f"{int(time.time())} {os.getpid()} {socket.gethostname()}")
    done = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}")
    assert done.code == 0, done
    close_ledgers()
    opened = subprocess.run(  # the rebuild of the ledger, this process, still at work
        [sys.executable, "-m", "ollama_meter", "report", "--since", "2026-10-01",
         "--db", f"sqlite:///{tmp_path / 'copy.db'}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert dict(copy.execute("SELECT key, value FROM ledger_meta WHERE key LIKE 'r%'")) == {
        "rollups": "current"
    }
    assert copy.execute("SELECT count(*) FROM rollups").fetchone()[0] > 0


@pytest.mark.parametrize("end", ["-wal", "-journal"])
def test_a_backup_onto_another_databases_empty_wal_or_journal_is_refused(
    cli: Any, tmp_path: Path, end: str
) -> None:
    """A WAL a checkpoint cut to nothing (`wal_checkpoint(TRUNCATE)`, as a prune ends) is an
    empty file, which a backup took for `mktemp`'s and renamed its copy over: the process
    using that database wrote on to the WAL no name led to any more, and every other reader
    of it met "database disk image is malformed". A database's file beside it is no backup."""
    other = tmp_path / "other.db"
    user = sqlite3.connect(other, isolation_level=None)  # a process that has it open
    try:
        user.execute(f"PRAGMA journal_mode = {'WAL' if end == '-wal' else 'TRUNCATE'}")
        user.execute("CREATE TABLE t (x)")
        user.execute("INSERT INTO t VALUES (1)")
        if end == "-wal":
            user.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:  # TRUNCATE mode leaves its journal, emptied, after each transaction
            assert Path(f"{other}{end}").exists()
        beside = Path(f"{other}{end}")
        assert beside.stat().st_size == 0
        db = f"sqlite:///{tmp_path / 'ledger.db'}"
        Ledger(db).record(_spans(3))
        done = cli("db", "backup", str(beside), "--db", db)
        assert (done.code, done.stdout) == (2, ""), done.stdout
        assert done.stderr == (
            f"error: {beside} is a SQLite database's {end[1:]} file, not a backup: a backup "
            "written over it would take from that database what it holds there. Give another "
            "file\n"
        )
        assert beside.stat().st_size == 0 and not list(tmp_path.glob(".*partial*"))
        user.execute("INSERT INTO t VALUES (2)")
        with sqlite3.connect(other) as reader:
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        user.close()
        close_ledgers()
