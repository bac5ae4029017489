"""Export, import, prune and backup, third round: paths with a URI's characters in them,
windows at the edges of time, spans the clock put after today."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from ollama_meter.ledger import Ledger, export_lines, import_lines, span_to_dict
from tests.factories import make_span
from tests.integrity.test_disk_full import fill, small_disk  # noqa: F401 (a fixture)
from tests.ledger.test_transfer import _spans, _tables


@pytest.mark.parametrize("folder", ["a#b", "a?mode=rwc", "100%", "50%41", "x y"])
def test_a_backup_of_a_ledger_whose_path_holds_a_uri_s_characters_copies_that_ledger(
    cli: Any, tmp_path: Path, folder: str
) -> None:
    """The ledger was opened for the copy as ``file:PATH?mode=ro``: in a folder named ``a#b``
    the ``#`` began the URI's fragment, so SQLite made an empty ``a`` beside it, copied that,
    and the backup said it had succeeded (0.0 MB)."""
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "ledger.db"
    url = "sqlite:///" + quote(str(path))
    ledger = Ledger(url)
    assert ledger.path == path
    ledger.record(_spans(40))
    target = tmp_path / folder / "copy.db"
    beside = sorted(tmp_path.iterdir())
    result = cli("db", "backup", str(target), "--db", url)
    assert result.code == 0, result.stderr
    copy = Ledger("sqlite:///" + quote(str(target)))
    assert copy.count() == 40 and _tables(copy) == _tables(ledger)
    with copy.read() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    assert sorted(tmp_path.iterdir()) == beside  # nothing made beside the folder


def test_an_export_from_a_date_takes_the_spans_the_clock_put_after_today(
    cli: Any, sqlite_url: str
) -> None:
    """``--since`` alone ended the window at the end of today: a span started later (a
    gateway whose clock runs ahead, a ledger of planned or test traffic) was left out of
    ``export --since 2026-10-01 | import`` without a word, though ``export`` took it."""
    ledger = Ledger(sqlite_url)
    ahead = make_span(started_at=datetime.now(UTC) + timedelta(days=2))
    far = make_span(started_at=datetime(9998, 12, 30, tzinfo=UTC))
    ledger.record([*_spans(40), ahead, far])
    everything = cli("db", "export", "--db", sqlite_url)
    since = cli("db", "export", "--since", "1970-01-01", "--db", sqlite_url)
    assert (since.code, since.stderr) == (0, "exported 42 span(s)\n")
    assert since.stdout.splitlines() == sorted(
        everything.stdout.splitlines(), key=lambda line: json.loads(line)["started_at"]
    )
    later = cli("db", "export", "--since", "9998-12-30", "--db", sqlite_url)
    assert (later.code, later.stderr) == (0, "exported 1 span(s)\n")
    assert json.loads(later.stdout)["id"] == far.id


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Pacific/Kiritimati", "Australia/Eucla"])
def test_an_export_from_the_local_day_after_the_last_utc_one_takes_its_spans(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    """East of UTC, the local 9999-01-01 begins on 9998-12-31 UTC, a day the ledger holds (as
    report and reprice take it). ``export --since 9999-01-01`` ended its window at an
    ``--until 9998-12-31`` of its own making, and refused: 'error: --until 9998-12-31 is before
    --since 9999-01-01', naming an option no one gave."""
    monkeypatch.setenv("OMETER_TIMEZONE", zone)
    last = make_span(started_at=datetime(9998, 12, 31, 23, 59, tzinfo=UTC))
    Ledger(sqlite_url).record([*_spans(3), last])
    done = cli("db", "export", "--since", "9999-01-01", "--db", sqlite_url)
    assert (done.code, done.stderr) == (0, "exported 1 span(s)\n")
    assert json.loads(done.stdout)["id"] == last.id


def test_an_export_of_a_window_is_the_same_bytes_from_every_ledger_that_holds_its_spans(
    db_url: str, tmp_path: Path
) -> None:
    """A window's export was ordered by start time alone: calls that started in the same
    microsecond came in the order each ledger happened to store them (the source's arrival
    order, the import's id order), so exporting it again from the ledger it was moved to gave
    other bytes, and an export run twice on PostgreSQL could too."""
    at = datetime(2026, 11, 10, 12, tzinfo=UTC)
    spans = sorted(
        (make_span(started_at=at + timedelta(seconds=n % 3)) for n in range(30)),
        key=lambda span: span.id,
    )
    source = Ledger(f"sqlite:///{tmp_path / 'source.db'}")
    for span in reversed(spans):  # as they arrived: latest id first
        source.record([span])
    november = {
        "since": datetime(2026, 11, 1, tzinfo=UTC),
        "until": datetime(2026, 12, 1, tzinfo=UTC),
    }
    lines = list(export_lines(source, **november))
    assert [json.loads(line)["id"] for line in lines] == [
        span.id for span in sorted(spans, key=lambda span: (span.started_at, span.id))
    ]
    target = Ledger(db_url)
    assert import_lines(target, lines).added == 30
    assert list(export_lines(target, **november)) == lines


def test_a_backup_onto_a_full_disk_leaves_nothing_there(
    cli: Any,
    tmp_path: Path,
    small_disk: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """The temp copy was removed, its rollback journal (SQLite's ``-journal`` beside it) was
    not: every failed nightly backup left one on the disk that was already full."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).record(_spans(2000))
    filler = fill(small_disk)
    filler.write_bytes(filler.read_bytes()[:-200_000])  # room for a journal, not the copy
    target = small_disk / "copy.db"
    result = cli("db", "backup", str(target), "--db", url)
    said = (
        f"error: could not back up {tmp_path / 'ledger.db'} to {target}: the disk that holds "
        f"{small_disk} is full, and nothing was written: free some space and run again, or give "
        "a file on another disk\n"
    )
    assert (result.code, result.stderr) == (1, said)
    assert sorted(small_disk.iterdir()) == [filler]


def test_an_import_holds_the_ledger_for_a_few_thousand_spans_at_a_time(
    sqlite_url: str,
) -> None:
    """A batch is one transaction, and on SQLite the write lock for all of it: 20,000 spans
    held it 3.2 s on a quiet machine of 2 cores (8 s at the README's loaded 2,452 spans/s),
    past OMETER_LEDGER_WAIT (5 s), so a gateway beside the import spooled its calls, and
    one with a hard budget refused them ("the budget cannot be checked"). 2,000 spans a batch
    imported as fast (7.2 to 7.5 s of CPU for 60,000 spans either way)."""
    lines = [json.dumps(span_to_dict(span)).encode() for span in _spans(5_000)]
    batches: list[int] = []
    summary = import_lines(Ledger(sqlite_url), lines, progress=batches.append)
    assert batches == [2_000, 2_000, 1_000] and summary.added == 5_000


def test_a_backup_copies_the_ledger_as_it_is_and_upgrades_nothing(cli: Any, tmp_path: Path) -> None:
    """The copy taken before an upgrade is the one to go back to if the upgrade goes wrong:
    `db backup` opened the ledger as every command does, so it upgraded it first (on a big
    ledger, a long migration and rollup build), and both it and the copy were the new
    schema. A ledger that is not there is said to be missing, not made empty and copied."""
    from ollama_meter.ledger import current_revision, upgrade
    from ollama_meter.ledger._engine import create_ledger_engine

    path = tmp_path / "ledger.db"
    engine = create_ledger_engine(f"sqlite:///{path}")
    upgrade(engine, "0015")
    engine.dispose()
    result = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}")
    assert result.code == 0, result.stderr
    for file in (path, tmp_path / "copy.db"):
        engine = create_ledger_engine(f"sqlite:///{file}")
        assert current_revision(engine) == "0015", file
        engine.dispose()
    missing = tmp_path / "nowhere" / "ledger.db"
    result = cli("db", "backup", str(tmp_path / "other.db"), "--db", f"sqlite:///{missing}")
    assert result.code == 2
    assert result.stderr.startswith(f"error: no ledger at {missing}: nothing was ever recorded")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [
        "copy.db",
        "ledger.db",
    ]
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("cut", [1, 300, 800])
def test_an_export_cut_short_says_so_rather_than_to_fix_its_last_line(
    cli: Any, sqlite_url: str, tmp_path: Path, cut: int
) -> None:
    """An export stopped part way (a full disk, a killed `db export`, a copy still running)
    ends in the middle of a span: 'not JSON: Input data was truncated ... fix the line' asked
    for a repair no one can make. The spans before it are kept; the way on is a whole export."""
    lines = [json.dumps(span_to_dict(span)).encode() + b"\n" for span in _spans(5)]
    path = tmp_path / "cut.jsonl"
    whole = b"".join(lines)
    path.write_bytes(whole[: len(b"".join(lines[:4])) + cut])
    result = cli("db", "import", str(path), "--db", sqlite_url)
    assert (result.code, result.stderr) == (
        2,
        "error: line 5: the file ends part way through this span (an export cut short: a full "
        "disk, a stopped export, a copy still being written); the 4 span(s) before it are "
        "recorded: import a whole export (spans already there are skipped)\n",
    )
    assert Ledger(sqlite_url).count() == 4


def test_ledgers_opened_by_several_threads_at_once_are_each_migrated(db_url: str) -> None:
    """Alembic runs a migration through module globals (``alembic.context``, ``op``): three
    threads opening a new ledger at once (an import each, a host's own threads) failed with
    KeyError('script') or 'database is locked' from the migration, not from any write."""
    failures: list[BaseException] = []
    opened: list[Ledger] = []

    def open_one() -> None:
        try:
            opened.append(Ledger(db_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(opened) == 4
    assert {ledger.count() for ledger in opened} == {0}


def test_an_export_while_spans_are_written_is_the_ledger_as_it_began(db_url: str) -> None:
    """``db export`` reads one snapshot however long it streams: spans recorded while it runs,
    started among those it has still to give, are in none of its lines, and the spans it
    gives are each there once."""
    ledger, writer = Ledger(db_url), Ledger(db_url)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    ledger.record([make_span(started_at=start + timedelta(seconds=i)) for i in range(2_500)])
    given: list[str] = []
    for n, line in enumerate(export_lines(ledger, since=start)):
        given.append(json.loads(line)["department"])
        if n % 500 == 0:  # a batch in the middle of the window, and one at its end
            writer.record(
                [
                    make_span(started_at=start + timedelta(seconds=s, microseconds=1),
                              department=f"b{n}")
                    for s in (1_250, 2_499)
                ]
            )  # fmt: skip
    assert given == ["sales"] * 2_500
    assert ledger.count() == 2_510
