"""Output on a stdout whose encoding cannot hold every character of the data.

A model's name is whatever its caller or Ollama wrote (``qwen2.5:中文``); stdout's encoding is
the locale's (a Windows redirect's is cp1252, a legacy server's ISO-8859-1, PYTHONIOENCODING
may say ascii). ``report --format csv > bill.csv`` there ended with exit 70, "This is a bug
in ometer", and no file; so did every table, and ``log`` on its own middle dot.

CSV, JSON and HTML are data: on stdout they are the UTF-8 bytes ``--out`` writes, whatever
the locale. Tables and messages are for a person: what the stream cannot encode is written as
an escape (``\\u4e2d``), as Python writes stderr.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.cli import main
from ollama_meter.ledger import Ledger
from tests.factories import make_span

NAMES = ["qwen2.5:中文", "llama3.1:grüße", "gemma:😀"]
AT = datetime(2026, 11, 3, 9, tzinfo=UTC)
ENCODINGS = ["ascii", "latin-1", "cp1252"]


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: str


@pytest.fixture
def ometer(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``ometer ARGS`` in this process through the real entry point, its stdout a text stream
    in ``encoding`` over bytes, strict as the locale's is (what PYTHONIOENCODING makes of a
    process's stdout: one process shows that, below)."""

    def run(encoding: str, *args: str) -> Ran:
        capsys.readouterr()
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "argv", ["ometer", *args])
        monkeypatch.setenv("COLUMNS", "200")
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        stdout.flush()
        return Ran(code, raw.getvalue(), capsys.readouterr().err)

    return run


def test_a_process_whose_stdout_is_ascii_writes_csv_as_utf8_and_tables_with_escapes(
    ledger_url: str,
) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "200"}
    for args, says in (
        (["--format", "csv"], "qwen2.5:中文".encode()),
        ([], b"gemma:\\U0001f600"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ollama_meter", "report", "--period", "2026-11", "--by",
             "model", "--db", ledger_url, *args],
            env=env, capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert says in done.stdout, done.stdout


@pytest.fixture
def ledger_url(sqlite_url: str) -> str:
    Ledger(sqlite_url).record(
        [make_span(request_model=name, started_at=AT, cost_total=1_000) for name in NAMES]
    )
    return sqlite_url


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_data_on_stdout_is_the_utf8_of_the_out_file(
    ometer: Any, ledger_url: str, tmp_path: Path, encoding: str
) -> None:
    commands = [
        ["report", "--period", "2026-11", "--by", "model", "--format", "csv"],
        ["report", "--period", "2026-11", "--by", "model", "--format", "json"],
        ["report", "--period", "2026-11", "--by", "model", "--format", "html"],
        ["perf", "--period", "2026-11", "--by", "model", "--format", "csv"],
    ]
    for args in commands:
        piped = ometer(encoding, *args, "--db", ledger_url)
        assert piped.returncode == 0, (args, piped.stderr)
        out = tmp_path / "out"
        written = ometer(encoding, *args, "--db", ledger_url, "--out", str(out))
        assert written.returncode == 0, written.stderr
        assert piped.stdout == out.read_bytes(), args
        assert all(name.encode() in piped.stdout for name in NAMES), args
    shown = ometer(encoding, "log", "--json", "--db", ledger_url)
    assert shown.returncode == 0, shown.stderr
    assert all(name.encode() in shown.stdout for name in NAMES)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tables_write_what_stdout_cannot_hold_as_escapes(
    ometer: Any, ledger_url: str, encoding: str
) -> None:
    for args in (
        ["report", "--period", "2026-11", "--by", "model"],
        ["perf", "--period", "2026-11", "--by", "model"],
        ["log"],
    ):
        done = ometer(encoding, *args, "--db", ledger_url)
        assert done.returncode == 0, (args, done.stderr)
        text = done.stdout.decode(encoding)
        assert "\\u4e2d\\u6587" in text or "中文" in text, args
        assert "gemma:\\U0001f600" in text, args


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_table_with_escapes_keeps_its_grid(ometer: Any, ledger_url: str, encoding: str) -> None:
    """The grid was laid out for the characters, then each written as its escape: a cell of
    ``qwen2.5:中文`` (12 wide) took 22 columns, and ``log``'s own ``1→13`` in every row 11, so
    no row's borders met the heading's (ISO-8859-1 holds no arrow)."""
    for args in (["report", "--period", "2026-11", "--by", "model"], ["log"]):
        done = ometer(encoding, *args, "--db", ledger_url)
        assert done.returncode == 0, (args, done.stderr)
        grid = [line for line in done.stdout.decode(encoding).splitlines() if line[:1] in "|+"]
        assert len(grid) > 4, (args, done.stdout)
        assert {len(line) for line in grid} == {len(grid[0])}, (args, "\n".join(grid))
