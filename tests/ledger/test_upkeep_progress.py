"""Upkeep over many spans shows how far it got as it goes: a prune of millions of spans, an
export of a big ledger and a backup of a big file each ran for minutes with nothing moving
on the terminal (a bar at nought, or no bar at all)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, prune
from tests.factories import make_span

_REPO = Path(__file__).resolve().parents[2]


class _Bar:
    """What a command tells its progress bar, in order: ("total", n) and ("done", n)."""

    def __init__(self, said: list[tuple[str, Any]]) -> None:
        self.said = said

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *_: object) -> None:
        self.said.append(("closed", None))

    def add_task(self, _what: str, total: float | None = None) -> int:
        if total is not None:
            self.said.append(("total", total))
        return 0

    def update(
        self, _task: int, *, completed: float | None = None, total: float | None = None
    ) -> None:
        if total is not None:
            self.said.append(("total", total))
        if completed is not None:
            self.said.append(("done", completed))

    def advance(self, _task: int, step: float = 1) -> None:
        self.said.append(("step", step))


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every progress bar `ometer db ...` opens, recorded rather than drawn."""
    said: list[tuple[str, Any]] = []
    for where in ("ollama_meter.cli.db", "ollama_meter.cli._common"):
        monkeypatch.setattr(f"{where}.progress_bar", lambda *_a, **_k: _Bar(said))
    return said


def _old_and_new(ledger: Ledger, old: int, new: int) -> None:
    now = datetime.now(UTC)
    ledger.record(
        [make_span(started_at=now - timedelta(days=40, minutes=n)) for n in range(old)]
        + [make_span(started_at=now - timedelta(hours=1, minutes=n)) for n in range(new)]
    )


def test_a_prune_is_told_how_many_spans_it_will_remove_before_the_first_piece(
    db_url: str,
) -> None:
    ledger = Ledger(db_url)
    _old_and_new(ledger, 23, 4)
    said: list[tuple[str, int]] = []
    result = prune(
        ledger,
        30,
        now=datetime.now(UTC),
        chunk=10,
        planned=lambda total: said.append(("total", total)),
        progress=lambda n: said.append(("piece", n)),
    )
    assert said == [("total", 23), ("piece", 10), ("piece", 10), ("piece", 3)]
    assert result.removed == 23 and ledger.count() == 4
    said.clear()
    prune(ledger, 30, now=datetime.now(UTC), planned=lambda t: said.append(("total", t)))
    assert said == []  # nothing left to remove: nothing planned


def test_db_prune_moves_its_bar_to_the_spans_it_removed(
    cli: Any, sqlite_url: str, bars: list[tuple[str, Any]]
) -> None:
    _old_and_new(Ledger(sqlite_url), 23, 4)
    done = cli("db", "prune", "--keep-days", "30", "--db", sqlite_url)
    assert done.code == 0 and done.stdout.startswith("removed 23 span(s)"), done
    assert bars == [("total", 23), ("done", 23), ("closed", None)]


def test_a_backup_moves_its_bar_as_it_copies_and_keeps_one_snapshot(
    cli: Any, tmp_path: Path, bars: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copied in one step, a backup of a big ledger left its bar at nought until the end.
    In steps, each a few pages here, with a call committed by another process between two:
    the bar moves step by step to the file's pages, and the copy is the ledger as the backup
    began, whole (a step after another process's commit starts no copy again either)."""
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    _old_and_new(Ledger(url), 0, 300)
    monkeypatch.setattr("ollama_meter.ledger._backup.BACKUP_STEP_PAGES", 5, raising=False)
    script = (
        "import sys; from tests.factories import make_span; "
        "from ollama_meter.ledger import Ledger; Ledger(sys.argv[1]).record([make_span()])"
    )
    real = _Bar.update

    def and_a_call(self: _Bar, task: int, **kwargs: Any) -> None:
        real(self, task, **kwargs)
        if len(self.said) < 8:  # another process's commit between two steps
            subprocess.run([sys.executable, "-c", script, url], check=True, cwd=_REPO)

    monkeypatch.setattr(_Bar, "update", and_a_call)
    done = cli("db", "backup", str(tmp_path / "copy.db"), "--db", url)
    assert done.code == 0, done
    steps = [n for what, n in bars if what == "done"]
    totals = {n for what, n in bars if what == "total"}
    assert len(steps) > 3 and steps == sorted(steps) and len(totals) == 1, bars
    assert steps[-1] == totals.pop()
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT count(*) FROM spans").fetchone() == (300,)
    assert Ledger(url).count() > 300  # the calls committed meanwhile are the ledger's


def test_db_export_moves_its_bar_to_the_spans_it_wrote(
    cli: Any, sqlite_url: str, bars: list[tuple[str, Any]]
) -> None:
    """An export of millions of spans to a file wrote nothing on the terminal for minutes."""
    _old_and_new(Ledger(sqlite_url), 1200, 1100)
    done = cli("db", "export", "--db", sqlite_url)
    assert done.code == 0 and done.stdout.count("\n") == 2300, done.stderr
    assert bars == [
        ("total", 2300),
        ("done", 1000),
        ("done", 2000),
        ("done", 2300),
        ("closed", None),
    ]
    bars.clear()
    since = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    done = cli("db", "export", "--since", since, "--db", sqlite_url)
    assert done.code == 0 and done.stdout.count("\n") == 1100, done.stderr
    assert bars == [("total", 1100), ("done", 1000), ("done", 1100), ("closed", None)]
