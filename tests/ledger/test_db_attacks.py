"""The ledger's upkeep and moves under attack: a zone this host does not know, a move after a
prune, failures in the middle of a bulk command."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers, import_lines, prune, span_to_dict
from ollama_meter.ledger._meta import set_meta
from ollama_meter.records import Stored
from tests.factories import make_span
from tests.integrity.test_disk_full import fill, small_disk  # noqa: F401 (a fixture)
from tests.ledger.test_transfer import NOW, _spans, _tables

UNKNOWN_ZONE = "America/Nowhere_Newer"
"""A zone a newer time zone database has and this host's does not (as America/Coyhaique
was for hosts before tzdata 2025b)."""


def _zone_unknown_here(ledger: Ledger) -> None:
    """The ledger's zone as another host, with newer zone data, set it."""
    with ledger.write() as conn:
        set_meta(conn, "zone", UNKNOWN_ZONE)


def test_a_span_written_to_a_ledger_whose_zone_this_host_does_not_know_is_spooled(
    sqlite_url: str,
) -> None:
    ledger = Ledger(sqlite_url)
    ledger.record([make_span()])
    _zone_unknown_here(ledger)
    span = make_span(started_at=datetime(2026, 11, 11, 9, tzinfo=UTC))
    assert ledger.record([span]) == {span.id: Stored.SPOOLED}  # not an exception: not lost
    assert ledger.spool.pending()
    november = SpanFilter(
        since=datetime(2026, 11, 1, tzinfo=UTC), until=datetime(2026, 12, 1, tzinfo=UTC)
    )
    with pytest.raises(LedgerError, match=UNKNOWN_ZONE):
        ledger.spend(november, ["department"])


def test_commands_on_a_ledger_whose_zone_this_host_does_not_know_say_so_in_one_line(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    ledger = Ledger(sqlite_url)
    ledger.record([make_span()])
    _zone_unknown_here(ledger)
    close_ledgers()
    said = (
        f"the ledger's days begin at midnight in {UNKNOWN_ZONE}, a time zone this machine does "
        "not know (a machine with newer zone data set it): update the zone data here "
        "(pip install -U tzdata, or the system's tzdata package)"
    )
    for command in (
        ["report", "--period", "2026-11"],
        ["db", "prune", "--keep-days", "400"],
        ["db", "rollup"],
    ):
        result = cli(*command)
        assert (result.code, result.stdout) == (1, ""), command
        assert result.stderr.startswith(f"error: {said}"), (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)


def test_an_upgrade_of_a_ledger_whose_zone_this_host_does_not_know_says_so_in_one_line(
    cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0011 cuts busy minutes into the ledger's days: on a host without the ledger's zone it
    was "unexpected ZoneInfoNotFoundError ... This is a bug in ometer"."""
    from ollama_meter.ledger import current_revision
    from tests.ledger.test_ledger import downgrade

    monkeypatch.setenv("OMETER_DB_URL", db_url)
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record([make_span()])
    downgrade(ledger, "0010")
    _zone_unknown_here(ledger)
    close_ledgers()
    ledger.dispose()
    for command in (["log"], ["db", "upgrade"]):
        result = cli(*command)
        assert (result.code, result.stdout) == (1, ""), command
        assert result.stderr.startswith("error: "), result.stderr
        assert f"midnight in {UNKNOWN_ZONE}, a time zone this machine does not know" in (
            result.stderr
        )
        assert "update the zone data here" in result.stderr and "bug" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    left = Ledger(db_url, migrate=False)
    assert current_revision(left.engine) == "0010"  # as it was: nothing half done
    left.dispose()


def test_an_export_of_a_pruned_ledger_says_the_pruned_days_do_not_move(
    cli: Any, sqlite_url: str
) -> None:
    """Moving a pruned ledger (export | import) takes its raw spans, not the rollups that are
    all that is left of the pruned days: the new ledger reports nothing for them."""
    ledger = Ledger(sqlite_url)
    ledger.record(_spans(300))
    assert prune(ledger, 25, now=NOW).cutoff == datetime(2026, 11, 25, tzinfo=UTC)
    said = (
        "warning: raw spans that started before 2026-11-25 00:00 UTC were pruned: those days "
        "are kept only as rollups, which an export does not carry, so a ledger this export "
        "is imported into has no calls before then (keep this ledger or a backup of it for "
        "their reports)\n"
    )
    for window in ([], ["--since", "2026-11-01"], ["--until", "2026-11-24"]):
        result = cli("db", "export", *window, "--db", sqlite_url)
        assert result.code == 0, result.stderr
        assert result.stderr.endswith(said), (window, result.stderr)
    after = cli(
        "db", "export", "--since", "2026-11-25", "--until", "2026-12-31", "--db", sqlite_url
    )
    assert (after.code, after.stderr) == (0, f"exported {ledger.count():,} span(s)\n")


def test_an_import_onto_a_full_disk_does_not_say_its_spans_wait_in_the_spool(
    small_disk: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """Only a metered call's span goes to the spool: an import that fails says to free space
    and run it again, not that its spans wait somewhere to be recorded."""
    ledger = Ledger(f"sqlite:///{small_disk / 'ledger.db'}")
    lines = [json.dumps(span_to_dict(s)).encode() for s in _spans(10)]
    assert import_lines(ledger, lines[:4]).added == 4
    filler = fill(small_disk)
    with pytest.raises(LedgerError) as stopped:
        import_lines(ledger, lines)
    said = str(stopped.value)
    assert "database or disk is full: free some disk space; the 0 span(s) before this " in said
    assert "spool" not in said
    filler.unlink()
    assert import_lines(ledger, lines).added == 6


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("x" * 260 + ".db", "the name is longer than the file system takes: give a shorter one"),
        ("x" * 240 + ".db", None),  # a name the folder takes: the copy is written
    ],
)
def test_a_backup_that_cannot_be_written_says_why(
    cli: Any, tmp_path: Path, where: str, reason: str | None
) -> None:
    """SQLite says 'unable to open database file' for any of these, which reads as if the
    ledger could not be opened; a name the folder takes failed too (the temp name beside it
    was longer than a name may be). A folder not there, or a file in its place: see
    tests/cli/test_written_files.py."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(5))
    (tmp_path / "a-file").write_text("")
    target = tmp_path / where
    result = cli("db", "backup", str(target), "--db", url)
    if reason is None:
        assert result.code == 0, result.stderr
        assert target.stat().st_size > 0
    else:
        said = f"error: could not back up {tmp_path / 'ledger.db'} to "
        assert result.code == 1 and result.stderr.startswith(said), result.stderr
        assert result.stderr.endswith(f": {reason}\n")  # the long name between, cut
    assert not list(tmp_path.glob(".*partial"))


def test_a_compressed_export_or_a_backup_given_to_import_is_named_for_what_it_is(
    cli: Any, tmp_path: Path
) -> None:
    """'line 1: not JSON: invalid character (byte 0)' for ``export.jsonl.gz`` or a backup's
    SQLite file: what the file is, and what to do with it, said instead."""
    import bz2
    import gzip
    import lzma
    import zipfile

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.record(_spans(3))
    export = b"".join(json.dumps(span_to_dict(s)).encode() + b"\n" for s in _spans(3))
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("export.jsonl", export)
    assert cli("db", "backup", str(tmp_path / "backup.db"), "--db", url).code == 0
    files = {
        "export.jsonl.gz": (gzip.compress(export), "gzip-compressed: zcat"),
        "export.jsonl.bz2": (bz2.compress(export), "bzip2-compressed: bzcat"),
        "export.jsonl.xz": (lzma.compress(export), "xz-compressed: xzcat"),
        "export.jsonl.zst": (b"\x28\xb5\x2f\xfd" + export, "zstd-compressed: zstdcat"),
        "export.zip": ((tmp_path / "export.zip").read_bytes(), "a zip archive: unzip -p"),
    }
    for name, (data, what) in files.items():
        (tmp_path / name).write_bytes(data)
        result = cli("db", "import", str(tmp_path / name), "--db", url)
        said = f"error: line 1: the file is {what} {tmp_path / name} | ometer db import -\n"
        assert (result.code, result.stderr) == (2, said), name
    result = cli("db", "import", str(tmp_path / "backup.db"), "--db", url)
    assert result.code == 2 and result.stderr.startswith(
        "error: line 1: the file is a SQLite database (a ledger or its backup), not an export: "
        f"export it (ometer db export --db sqlite:///{tmp_path / 'backup.db'}) and import that\n"
    )
    assert ledger.count() == 3


def test_a_prune_while_the_rollups_are_cut_again_in_a_new_zone_waits_for_it(
    sqlite_url: str,
) -> None:
    """``db rollup --zone`` cuts each day again in the new zone, oldest first; a gateway's daily
    prune (OMETER_KEEP_DAYS) landing meanwhile moved the horizon past days not yet cut again,
    and the rebuild then left them as they were: the old zone's day and month cells for
    good, read as the new zone's."""
    ledger = Ledger(sqlite_url)
    ledger.record(_spans(120))
    kept = _tables(ledger)
    with ledger.write() as conn:  # what _change_zone leaves until the rebuild is done
        set_meta(conn, "zone", "Europe/Berlin")
        set_meta(conn, "rollups", "stale")
    with pytest.raises(LedgerError) as refused:
        prune(ledger, 25, now=NOW)
    assert str(refused.value) == (
        "the rollups are being cut again (ometer db rollup --zone, or the first open after an "
        "upgrade): prune once that is done, since the days it would prune could not be cut "
        "again after it"
    )
    assert ledger.pruned_before() is None and ledger.count() == 120
    assert _tables(ledger) == kept


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://ometer@127.0.0.1:1/ometer?password=Pw0sECRET",
        "postgresql+psycopg://ometer@127.0.0.1:1/ometer?sslmode=require&sslpassword=Pw0sECRET",
        "postgresql+psycopg://ometer:Pw0sECRET@127.0.0.1:1/ometer?password=Pw0sECRET",
        "postgresql+psycopg://ometer@127.0.0.1:1/ometer?Password=Pw0sECRET&password=",
    ],
)
def test_a_database_password_given_in_the_urls_query_is_never_shown(
    cli: Any, url: str, tmp_path: Path
) -> None:
    """libpq takes ``?password=`` (and a client key's ``?sslpassword=``) as it takes the URL's
    ``user:password@``; the password in the query was shown whole wherever the ledger is named:
    the gateway's start-up line, `db path`, every error, and the `pg_dump` command `db backup`
    prints (which needs none: PGPASSWORD or ~/.pgpass)."""
    for args in (("db", "path"), ("db", "backup", str(tmp_path / "copy.db"))):
        done = cli(*args, "--db", url)
        assert "Pw0sECRET" not in done.stdout + done.stderr, args
        assert "127.0.0.1:1/ometer" in done.stdout + done.stderr, args
    bad_port = url.replace(":1/", ":99999/")
    done = cli("db", "path", "--db", bad_port)
    assert done.code == 2 and "is not a database URL" in done.stderr
    assert "Pw0sECRET" not in done.stderr


def test_a_url_the_python_api_gives_that_is_none_is_refused_without_its_password() -> None:
    """Settings hide it; a URL given to Ledger() directly was echoed whole."""
    with pytest.raises(LedgerError) as refused:
        Ledger("postgres ql://ometer:Pw0sECRET@db/ometer?password=Pw0sECRET")
    assert "Pw0sECRET" not in str(refused.value)
    assert "is not a database URL" in str(refused.value)


@pytest.mark.parametrize(
    "args",
    [("report",), ("db", "import", "-"), ("db", "backup", "copy.db"), ("db", "upgrade")],
    ids=" ".join,
)
def test_a_ledger_url_naming_a_device_or_a_pipe_says_so_and_opens_nothing(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """`--db sqlite:////dev/null` (or a named pipe: a path pasted from a script) said only
    `disk I/O error`, after SQLite had opened the device to write a database onto it; a
    ledger under /proc was said to be on a full disk."""
    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/null"), fifo):
        done = cli(*args, "--db", f"sqlite:///{path}", stdin="")
        assert (done.code, done.stdout) == (1, ""), done.stderr
        assert done.stderr.endswith(
            f"{path} is a device or pipe, not a ledger file: give a file's path, e.g. "
            "sqlite:////var/lib/ometer/ledger.db\n"
        ), done.stderr
        assert done.stderr.count("\n") == 1
    assert fifo.is_fifo() and not list(tmp_path.glob("fifo-*")) and not Path("copy.db").exists()


def test_a_ledger_on_a_file_system_with_no_blocks_is_not_said_to_be_on_a_full_disk(
    cli: Any,
) -> None:
    """/proc counts no blocks at all: its 0 free bytes are not a full disk."""
    done = cli("report", "--db", "sqlite:////proc/self/mem")
    assert done.code == 1
    assert "full" not in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_ledgers_wal_given_to_import_is_named_for_what_it_is(cli: Any, tmp_path: Path) -> None:
    """`ometer db import ledger.db-wal` (a tab completion one name on) said `Expected object,
    got int`: the WAL's magic number reads as a JSON number."""
    ledger = tmp_path / "ledger.db"
    url = f"sqlite:///{ledger}"
    Ledger(url).record(_spans(3))
    wal = Path(f"{ledger}-wal")
    assert wal.read_bytes()[:3] == b"\x37\x7f\x06"
    copy = tmp_path / "copy-wal"
    copy.write_bytes(wal.read_bytes())
    result = cli("db", "import", str(copy), "--db", f"sqlite:///{tmp_path / 'other.db'}")
    assert (result.code, result.stderr) == (
        2,
        "error: line 1: the file is a SQLite write-ahead log (a ledger's -wal file), not an "
        "export: export the ledger it belongs to (ometer db export --db sqlite:///LEDGER) and "
        "import that\n",
    )
