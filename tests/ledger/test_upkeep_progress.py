"""Upkeep over many spans shows how far it got as it goes: a prune of millions of spans, an
export of a big ledger and a backup of a big file each ran for minutes with nothing moving
on the terminal (a bar at nought, or no bar at all)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.ledger import Ledger, prune, rebuild
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


def _export_on_a_terminal(url: str, lines: Path | None) -> bytes:
    """What ``ometer db export`` shows on a terminal that is its stderr, and its stdout too
    unless the lines go to the file ``lines``."""
    primary, secondary = os.openpty()
    with contextlib.ExitStack() as stack:
        sink = secondary if lines is None else stack.enter_context(lines.open("wb"))
        export = stack.enter_context(
            subprocess.Popen(
                [sys.executable, "-m", "ollama_meter", "db", "export", "--db", url],
                stdout=sink,
                stderr=secondary,
                env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
            )
        )
        os.close(secondary)
        shown = bytearray()
        with contextlib.suppress(OSError):  # EIO once the export has closed it
            while chunk := os.read(primary, 1 << 16):
                shown += chunk
    os.close(primary)
    assert export.returncode == 0, shown
    return bytes(shown)


def test_db_export_to_a_file_shows_a_bar_and_on_the_terminal_only_its_lines(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An export of millions of spans to a file showed nothing for minutes; the bar it shows
    now is left out when the lines go to the terminal too, where it would cut into them."""
    _old_and_new(Ledger(sqlite_url), 1200, 1100)
    shown = _export_on_a_terminal(sqlite_url, tmp_path / "export.jsonl")
    assert b"exporting" in shown and shown.rstrip().endswith(b"exported 2,300 span(s)")
    assert (tmp_path / "export.jsonl").read_bytes().count(b"\n") == 2300
    shown = _export_on_a_terminal(sqlite_url, None)
    assert b"exporting" not in shown
    spans = shown.replace(b"\r\n", b"\n").splitlines()
    assert len(spans) == 2301 and spans[-1] == b"exported 2,300 span(s)"
    assert all(line.startswith(b'{"id":') and line.endswith(b"}") for line in spans[:-1])


def test_db_rollup_moves_its_bar_over_the_days_it_rebuilds(
    cli: Any, sqlite_url: str, bars: list[tuple[str, Any]]
) -> None:
    """`ometer db rollup` drew a bar with no total: a count of days, no percent, no time left.
    It is told the days from the first call's to the day after the last (a call may be busy
    past midnight) before it begins; a day with nothing to redo is passed over at once, and
    moves the bar too."""
    ledger = Ledger(sqlite_url, zone="UTC")
    ledger.record([make_span(started_at=datetime(2026, 11, d, 10, tzinfo=UTC)) for d in (1, 5, 10)])
    done = cli("db", "rollup", "--db", sqlite_url)
    assert done.code == 0 and done.stdout.startswith("rolled up 3 span(s)"), done
    assert bars == [
        ("total", 11),
        *[("done", day) for day in (1, 2, 5, 6, 10, 11)],
        ("closed", None),
    ]


@settings(max_examples=15, deadline=None)
@given(
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns", "Pacific/Kiritimati"]),
    hours=st.lists(st.integers(0, 24 * 70), min_size=1, max_size=6),
)
@example(zone="Europe/Berlin", hours=[0, 24 * 60])  # over the day of 25 hours in October
def test_a_rebuild_is_told_its_days_before_the_first_and_reaches_them_all(
    zone: str, hours: list[int]
) -> None:
    """The days from the first call's month to the day after the last, in the ledger's zone (one
    of 23 or 25 hours is one day): told before the first, and reached step by step, each
    step a day or more (the days with nothing to redo are passed over at once)."""
    from zoneinfo import ZoneInfo

    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{folder}/ledger.db", zone=zone)
        start = datetime(2026, 9, 1, tzinfo=UTC)
        ledger.record([make_span(started_at=start + timedelta(hours=h)) for h in hours])
        said: list[tuple[str, int]] = []
        rebuild(
            ledger.write,
            ledger.read,
            planned=lambda days: said.append(("total", days)),
            progress=lambda days: said.append(("step", days)),
        )
        ledger.dispose()
    local = [(start + timedelta(hours=h)).astimezone(ZoneInfo(zone)).date() for h in hours]
    # from the first of the month (its month's cell begins there) to the day after the last
    assert said[0] == ("total", (max(local) - min(local).replace(day=1)).days + 2)
    steps = [n for what, n in said[1:] if what == "step"]
    assert len(steps) == len(said) - 1 and min(steps) >= 1 and sum(steps) == said[0][1]
