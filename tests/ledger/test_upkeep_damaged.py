"""Upkeep of a SQLite ledger with a damaged page: refused before it changes anything.

Such a ledger answers every command that misses the page. Its raw spans are what ``sqlite3
ledger.db .recover`` and ``ometer db rollup`` give the reports back from: a prune that removed
them left those days' damaged rollups as their only record, and a rebuild that met the page
stopped half way, which every command then tried to finish first, and failed.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, _upkeep, close_ledgers, prune
from tests.ledger.test_transfer import _spans


def _damage_a_page_of(path: Path, table: str) -> None:
    """Overwrite one leaf page of ``table``, as a failing disk or a torn write leaves it: the
    ledger still opens, and every statement that never reads that page works."""
    with sqlite3.connect(path) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [row[0] for row in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        )]  # fmt: skip
    assert len(pages) > 4
    with path.open("r+b") as file:
        file.seek((pages[len(pages) // 2] - 1) * size)
        file.write(b"\xff" * size)


def _damaged(tmp_path: Path, table: str) -> tuple[Path, int]:
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(600))  # October to December 2026: a prune of 30 days removes some
    count = ledger.count()
    ledger.dispose()
    close_ledgers()  # no page cache that would not see the damage
    _damage_a_page_of(path, table)
    return path, count


def _spans_in(path: Path) -> int:
    with sqlite3.connect(path) as conn:  # the spans' pages are whole: counted as they are
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])


@pytest.mark.parametrize("table", ["rollups", "rollup_histograms", "rollup_busy"])
def test_a_prune_of_a_ledger_with_a_damaged_page_removes_no_span_and_says_what_to_do(
    cli: Any, tmp_path: Path, table: str
) -> None:
    path, count = _damaged(tmp_path, table)
    done = cli("db", "prune", "--keep-days", "30", "--db", f"sqlite:///{path}")
    assert (done.code, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith(
        f"error: the ledger at {path} is damaged (SQLite's quick_check: "
    ), done.stderr
    assert done.stderr.endswith(
        "): nothing was pruned, since its raw spans are what its reports are given back from. "
        f"Keep the ledger as it is (stop the gateways), and recover what it holds: sqlite3 "
        f"{path} .recover | sqlite3 recovered.db\n"
    ), done.stderr
    assert done.stderr.count("\n") == 1
    assert _spans_in(path) == count
    with sqlite3.connect(path) as conn:  # no horizon: no day was said to be pruned
        assert not conn.execute("SELECT 1 FROM ledger_meta WHERE key = 'pruned_before'").fetchall()


def test_a_prune_reads_the_rollups_pages_not_those_of_the_spans_it_keeps(
    cli: Any, tmp_path: Path
) -> None:
    """The rollups are what a prune must find whole (its removed spans are their source), a
    sixth of a big ledger: a damaged page of the newest spans, which it keeps, is left to
    db backup's check of every page, and the prune's daily read stays small."""
    path, _ = _damaged(tmp_path, "spans")  # the middle page: November's spans, kept
    # On the day the spans are of: on any later one a prune of 30 days removes November's too
    # (the test ran on its own clock, so it failed from the day after it was written).
    ledger = Ledger(f"sqlite:///{path}", zone="UTC")
    result = prune(ledger, 30, now=datetime(2026, 12, 7, 12, tzinfo=UTC))
    ledger.dispose()
    assert (result.removed, result.cutoff) == (285, datetime(2026, 11, 7, tzinfo=UTC))
    backup = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}")
    assert backup.code == 1 and "is damaged" in backup.stderr, backup.stderr


def test_a_gateways_daily_prune_of_a_damaged_ledger_removes_no_span(tmp_path: Path) -> None:
    path, count = _damaged(tmp_path, "rollups")
    ledger = Ledger(f"sqlite:///{path}")
    with pytest.raises(LedgerError, match="is damaged"):
        prune(ledger, 30)
    ledger.dispose()
    assert _spans_in(path) == count


def test_a_prune_told_to_stop_while_it_reads_the_pages_stops_there_and_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway told to stop (SIGTERM) does not wait for the read of every page of a big
    ledger: the read is cut short, no horizon is known yet, and nothing is removed."""
    monkeypatch.setattr(_upkeep, "CHECK_STEPS", 1_000)  # a big ledger's many looks at stop
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(600))
    result = prune(ledger, 30, stop=lambda: True)
    assert (result.stopped, result.cutoff, result.removed) == (True, None, 0)
    assert ledger.count() == 600 and ledger.pruned_before() is None


def test_a_prune_stopped_by_ctrl_c_while_it_reads_the_pages_raises_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3 drops what its progress handler raises: a Ctrl-C there came out as a failed
    read ('interrupted'), not the interrupt it is."""
    monkeypatch.setattr(_upkeep, "CHECK_STEPS", 1_000)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(600))

    typed = []

    def ctrl_c() -> bool:  # once, as a signal is
        if not typed:
            typed.append(True)
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        prune(ledger, 30, stop=ctrl_c)
    assert ledger.count() == 600 and ledger.pruned_before() is None


@pytest.mark.parametrize("zone", [None, "Europe/Berlin"])
@pytest.mark.parametrize("table", ["spans", "rollups"])
def test_a_rollup_of_a_ledger_with_a_damaged_page_changes_nothing_and_says_what_to_do(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, zone: str | None
) -> None:
    monkeypatch.setenv("OMETER_TIMEZONE", "UTC")
    path, _ = _damaged(tmp_path, table)
    url = f"sqlite:///{path}"
    report = ("report", "--period", "2026-11", "--by", "department", "-f", "csv", "--db", url)
    answered = cli(*report)
    asked = ("db", "rollup", *(() if zone is None else ("--zone", zone)), "--db", url)
    done = cli(*asked)
    assert (done.code, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith(
        f"error: the ledger at {path} is damaged (SQLite's quick_check: "
    ), done.stderr
    assert "): nothing was rebuilt: a rebuild that met the damaged page would stop half" in (
        done.stderr
    ), done.stderr
    assert done.stderr.count("\n") == 1
    assert cli(*report) == answered  # as it answered before: no rebuild left to finish
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM ledger_meta").fetchall())
    assert (
        meta.get("zone") in (None, "UTC")
        and "rebuilding" not in meta
        and (meta.get("rollups") in (None, "current"))
    ), meta
