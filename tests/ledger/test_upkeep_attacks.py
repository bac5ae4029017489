"""`db prune`, `db export` and `db backup` against each other and a full disk: upkeep that
fails says what it did in one line, and never holds the other writers back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given as for_any, settings, strategies as st
from sqlalchemy import delete

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import (
    Ledger,
    SpanFilter,
    close_ledgers,
    export_lines,
    import_lines,
    prune,
    rebuild,
    span_to_dict,
)
from ollama_meter.ledger._meta import set_meta
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, ROLLUPS
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import SpanRecord
from tests._tmpfs import small_tmpfs
from tests.factories import make_span, token_prices
from tests.integrity.test_disk_full import fill
from tests.ledger.test_transfer import NOW, _monthly, _spans, _tables, interrupted_import


def _old_file(path: Path) -> None:
    """A ledger file made before ledgers chose incremental vacuum (``prune --vacuum`` rewrites
    it once)."""
    plain = sqlite3.connect(path)
    plain.execute("PRAGMA auto_vacuum = NONE")
    plain.execute("CREATE TABLE t (x)")
    plain.execute("DROP TABLE t")
    plain.close()


def test_a_prune_whose_vacuum_finds_the_disk_full_says_what_it_removed_and_what_to_do(
    tmp_path: Path,
) -> None:
    """The deletes went through but VACUUM had no room: `error: unexpected OperationalError:
    database or disk is full. This is a bug in ometer`, exit 70, and not a word of the spans
    already gone. Now one LedgerError says both, and the same prune run again once there is
    room finishes the job."""
    with small_tmpfs(tmp_path, "16m") as disk:
        path = disk / "old.db"
        _old_file(path)
        url = f"sqlite:///{path}"
        Ledger(url).record(_spans(3000))
        close_ledgers()
        plain = sqlite3.connect(path)  # the disk holds the ledger alone, no WAL to reuse
        plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        plain.close()
        filler = fill(disk)
        os.truncate(filler, filler.stat().st_size - 1_000_000)  # room for the deletes only
        try:
            with pytest.raises(LedgerError) as failed:
                prune(Ledger(url), 30, now=NOW, vacuum=True)
            assert str(failed.value) == (
                "removed 1,895 span(s) started before 2026-11-20 00:00 UTC, but giving their "
                f"space back to the disk failed: the ledger at {path} failed: database or disk "
                "is full: free some disk space; then run the same prune again (it removes "
                "nothing more, and gives the space back)"
            )
            filler.unlink()
            again = prune(Ledger(url), 30, now=NOW, vacuum=True)
            assert (again.removed, again.free_bytes) == (0, 0)
            assert Ledger(url).count() == 3000 - 1895
            plain = sqlite3.connect(path)
            assert plain.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # converted
            assert plain.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            plain.close()
        finally:
            close_ledgers()


def test_a_prune_beside_a_long_export_never_holds_other_writers_back(tmp_path: Path) -> None:
    """Its last step truncated the WAL (``wal_checkpoint(TRUNCATE)``), which waits for every
    reader to leave an older snapshot, as a long `db export` (or a report) reads one, and holds
    off every new writer while it waits: for OMETER_LEDGER_WAIT (here 30 s) no gateway or
    `ometer chat` could commit, and their spans went to the spool. A writer that waits 1 s
    for the lock now always gets it while the prune runs."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", wait=30)
    ledger.record(_spans(2000))
    export = export_lines(ledger)
    first = next(export)  # the export reads on, from the snapshot it began with
    done: list[object] = []
    pruning = threading.Thread(target=lambda: done.append(prune(ledger, 30, now=NOW)))
    pruning.start()
    writer = sqlite3.connect(path, timeout=1, isolation_level=None)
    refused = 0
    while pruning.is_alive():
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("COMMIT")
        except sqlite3.OperationalError:
            refused += 1
        time.sleep(0.01)
    pruning.join()
    writer.close()
    assert refused == 0 and len(done) == 1
    rest = list(export)  # and the export still gives the ledger as it was when it began
    assert len(rest) + 1 == 2000 and first < rest[0]
    close_ledgers()


def test_an_import_stopped_by_sigterm_says_what_it_recorded(tmp_path: Path) -> None:
    """`timeout 1h ometer db import big.jsonl` in cron, `docker stop`, systemd: SIGTERM ended
    the import with exit 143 and not a word, where Ctrl-C says how many spans are recorded
    and that running it again is safe. Now SIGTERM says the same."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    lines = [json.dumps(span_to_dict(span)).encode() + b"\n" for span in _spans(2010)]
    command = [sys.executable, "-m", "ollama_meter", "db", "import", "-"]
    env = {**os.environ, "OMETER_DB_URL": url}
    # a batch of 2,000 committed, 5 read after it
    returncode, out, err = interrupted_import(command, env, b"".join(lines[:2005]), signal.SIGTERM)
    assert (returncode, out) == (128 + signal.SIGTERM, b"")
    assert err.decode().splitlines()[-1:] == [
        "the first 2,000 span(s) are recorded, the batch in progress is not; run the same "
        "import again for the rest (spans already there are skipped)"
    ]
    assert Ledger(url).count() == 2000
    again = subprocess.run(
        command, env=env, input=b"".join(lines), capture_output=True, check=False
    )
    assert again.returncode == 0, again.stderr
    assert Ledger(url).count() == 2010
    close_ledgers()


@pytest.mark.parametrize(
    ("command", "named", "example"),
    [
        (("db", "backup"), "'target'", "ledger.db"),
        (("report", "--format", "csv", "--out"), "'--out' / '-o'", "report.csv"),
    ],
)
def test_a_file_to_write_named_as_a_folder_is_refused_not_made_a_file(
    cli: Any, tmp_path: Path, command: tuple[str, ...], named: str, example: str
) -> None:
    """`ometer db backup /srv/backup/` (meaning "into that folder", not there yet) wrote a FILE
    named `backup`: the path type drops the trailing slash. A name ending in / is a folder's,
    and so is a folder that is there: each is one line saying what to give instead."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(5))
    (tmp_path / "there").mkdir()
    for given in (f"{tmp_path / 'nowhere'}/", f"{tmp_path / 'there'}", f"{tmp_path / 'there'}/"):
        result = cli(*command, given, "--db", url)
        folder = given.rstrip("/")
        assert (result.code, result.stdout, result.stderr) == (
            2,
            "",
            f"error: Invalid value for {named}: {given!r} is a folder: give the name of a file "
            f"in it (e.g. {folder}/{example}) (see `ometer {command[0]} "
            f"{'backup ' if command[0] == 'db' else ''}--help`)\n",
        )
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == []
    close_ledgers()


def test_db_export_of_any_ledger_gives_its_spans(cli: Any, db_url: str) -> None:
    """On PostgreSQL every `ometer db export` failed: `error: the ledger at ... failed: syntax
    error at or near "SET"`. The export streams through a server-side cursor, and the
    statement that exempts bulk work from the idle-transaction limit went through it too
    (DECLARE ... CURSOR FOR SET LOCAL ...). The tests exported with the library call, which
    is not bulk work; the command is."""
    spans = _spans(40)
    Ledger(db_url).record(spans)
    done = cli("db", "export", "--db", db_url)
    assert (done.code, done.stderr) == (0, "exported 40 span(s)\n")
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == sorted(
        span.id for span in spans
    )
    november = cli("db", "export", "--since", "2026-11-01", "--until", "2026-11-30", "--db", db_url)
    assert november.code == 0, november.stderr


def test_an_id_given_twice_is_recorded_as_its_first_line_has_it(sqlite_url: str) -> None:
    """What the README says wins: within a batch, across batches and across imports."""
    ledger = Ledger(sqlite_url)
    first, other = make_span(tenant="first"), make_span(tenant="one")
    lines = [
        _line(first),
        _line(replace(first, tenant="second")),  # the same batch
        _line(other),
        *(_line(make_span()) for _ in range(3)),
        _line(replace(other, tenant="two")),  # a later batch
    ]
    summary = import_lines(ledger, lines, batch=2)
    assert (summary.read, summary.added, summary.present) == (7, 5, 2)
    again = import_lines(ledger, [_line(replace(first, tenant="third"))])
    assert (again.added, again.present) == (0, 1)
    kept = {span.id: span.tenant for span in ledger.latest(SpanFilter(), 10)}
    assert (kept[first.id], kept[other.id]) == ("first", "one")


def _line(span: SpanRecord) -> bytes:
    return json.dumps(span_to_dict(span)).encode() + b"\n"


def test_a_prune_on_postgresql_counts_the_ledgers_tables_alone(pg_server: str | None) -> None:
    """The sizes a prune prints were the whole database's: the system catalogs and every
    other schema's tables (another application's 8 MB table here) counted as the ledger."""
    from sqlalchemy import create_engine, text

    from tests.conftest import _fresh_pg_database

    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    url = _fresh_pg_database(pg_server)
    ledger = Ledger(url)
    ledger.record(_spans(10))
    other = create_engine(url)
    with other.begin() as conn:
        conn.execute(text("CREATE SCHEMA app"))
        conn.execute(text("CREATE TABLE app.blobs AS SELECT repeat('x', 1000) AS b FROM generate_series(1, 8000)"))  # fmt: skip
        ours = conn.execute(
            text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            )
        ).scalar_one()
    other.dispose()
    result = prune(ledger, 1, now=NOW)
    assert result.bytes_before == ours


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@for_any(pieces=st.integers(min_value=0, max_value=5))
def test_a_prune_told_to_stop_stops_between_pieces_and_the_next_one_goes_on(
    db_url: str, pieces: int
) -> None:
    """A gateway's stop (SIGTERM, systemd's 90 s) waited for its daily prune to end: on a big
    ledger 30 s and more (1M old spans), then SIGKILL. A prune is asked between its pieces
    whether to stop; what it did stays, the rollups equal a rebuild, the reports of the
    pruned months do not move, and the next prune removes the rest."""
    ledger = Ledger(db_url)
    with ledger.write() as conn:
        conn.execute(delete(SPANS))
        for table in (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
            conn.execute(delete(table))
        set_meta(conn, "pruned_before", None)
    ledger.record(_spans(50))
    months = {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")}
    asked = []

    def stop() -> bool:
        asked.append(ledger.count())
        return len(asked) > pieces

    result = prune(ledger, 25, now=NOW, chunk=7, stop=stop)
    old = ledger.count(SpanFilter(until=result.cutoff))
    assert result.stopped == (old > 0 or result.free_bytes > 0)
    assert result.removed == 50 - ledger.count()
    if old:  # each answer came between two whole pieces of seven
        assert result.removed == 7 * pieces and asked[-1] == 50 - result.removed
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    assert {month: _monthly(ledger, month) for month in months} == months
    rest = prune(ledger, 25, now=NOW, chunk=7)
    assert not rest.stopped and rest.removed == old
    assert ledger.count(SpanFilter(until=result.cutoff)) == 0
    assert {month: _monthly(ledger, month) for month in months} == months


_FOREGROUND = (  # Ctrl-C raises, as in a terminal's foreground job (a test run may ignore it)
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from ollama_meter.cli import main; sys.argv[0] = 'ometer'; main()"
)


def _stopped_at_its_first_write(path: Path, args: list[str], signum: int) -> tuple[int, str]:
    """Run ``ometer ARGS`` while another connection holds the ledger's write lock; once it
    waits for the lock (in SQLite's busy wait: its first write, past reading and opening),
    send ``signum`` and let the lock go. Its exit code and stderr."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{path}", "OMETER_LEDGER_WAIT": "120"}
    command = [sys.executable, "-c", _FOREGROUND, *args]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        deadline = time.monotonic() + 60
        while "nanosleep" not in Path(f"/proc/{run.pid}/wchan").read_text():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "it never waited for the lock"
            time.sleep(0.02)
        run.send_signal(signum)
        holder.execute("ROLLBACK")
        _, err = run.communicate(timeout=60)
    holder.close()
    return run.returncode, err.decode()


def test_a_prune_stopped_by_sigterm_says_what_it_removed_and_what_to_run(tmp_path: Path) -> None:
    """`timeout 1h ometer db prune` in cron, `systemctl stop`: SIGTERM ended it with exit 143
    and not a word (Ctrl-C: "interrupted"), where each piece it removed stays removed."""
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    Ledger(url).record(_spans(40))
    close_ledgers()
    code, err = _stopped_at_its_first_write(
        path, ["db", "prune", "--keep-days", "30"], signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM
    assert err.splitlines()[-1:] == [
        "stopped after removing 0 span(s) older than 30 day(s), the piece in progress not; "
        "reports do not change (rollups stay): run the same prune again for the rest"
    ]
    assert Ledger(url).count() == 40
    close_ledgers()


def test_a_reprice_stopped_by_ctrl_c_says_how_far_it_got(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(30))
    ledger.add_price_rules([token_prices()])  # every span's cost moves
    close_ledgers()
    code, err = _stopped_at_its_first_write(
        path, ["reprice", "--since", "2026-01-01"], signal.SIGINT
    )
    assert code == 130
    assert err.splitlines()[-2:] == [
        "stopped after re-pricing 0 of 30 span(s), the page in progress not (the rollups "
        "follow each page); run the same reprice again for the rest (spans already re-priced "
        "do not move again)",
        "interrupted",
    ]


def test_a_rollup_stopped_by_sigterm_says_the_next_open_finishes_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    Ledger(url).record(_spans(30))
    close_ledgers()
    kept = _tables(Ledger(url))
    close_ledgers()
    code, err = _stopped_at_its_first_write(path, ["db", "rollup"], signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert err.splitlines()[-1:] == [
        "stopped after rolling up 0 day(s), each whole; the next ometer command to open the "
        "ledger finishes the rest (or run ometer db rollup again)"
    ]
    assert _tables(Ledger(url)) == kept  # opened again: the rebuild finished, the same
    close_ledgers()
