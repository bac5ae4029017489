"""Every command that takes ``--db``, given a SQLite ledger in a folder that is not there.

One rule for all: a command that only reads or changes what a ledger holds (reports, lists,
removals, a reprice) says there is no ledger there and what makes one, exit 2, and makes
nothing; a command that records into it (a metered call, a rule, a key, a budget, a limit,
an upgrade, an import) makes the ledger, and its folder, saying so on stderr. ``keys list``,
``pricing list``, ``budget list``, ``limit list``, their ``rm``/``revoke``, and ``reprice``
made an empty ledger, and its folders, to say "nothing here".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from ollama_meter.cli import app
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.ledger._jsonl import export_line
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.test_processes import start_gateway

CALL = (
    "import json, os, urllib.request; urllib.request.urlopen(os.environ['OLLAMA_HOST'] + "
    "'/api/generate', json.dumps({'model': 'llama3.1:8b', 'prompt': 'hi', 'stream': False})"
    ".encode()).read()"
)
READING: dict[str, tuple[str, ...]] = {
    "log": (),
    "report": (),
    "perf": (),
    "reprice": ("--since", "2026-01-01"),
    "chargeback": ("--month", "2026-11"),
    "keys list": (),
    "keys revoke": ("1",),
    "keys rotate": ("1",),
    "pricing list": (),
    "pricing rm": ("1",),
    "budget list": (),
    "budget status": (),
    "budget rm": ("1",),
    "limit list": (),
    "limit rm": ("sales",),
    "db rollup": (),
    "db export": (),
    "db prune": ("--keep-days", "30"),
    "db backup": ("{tmp}/copy.db",),
}
"""Commands that read or change what is recorded: no ledger is nothing to read."""
RECORDING: dict[str, tuple[str, ...]] = {
    "chat": ("hi",),
    "demo": ("--calls", "3"),
    "keys create": ("--dept", "sales"),
    "pricing set": ("llama*", "--input-per-1m", "1"),
    "pricing import": ("{tmp}/prices.toml",),
    "budget set": ("sales", "--daily", "5"),
    "limit set": ("sales", "--rpm", "5"),
    "db upgrade": (),
    "db import": ("{tmp}/spans.jsonl",),
}
"""Commands that record into the ledger: the first of them makes it."""
ELSEWHERE = {
    "db path": "says where the ledger is, and that there is none yet",
    "serve": "a process of its own",
    "run": "a process of its own: its gateway logs to the process's stderr",
}


def _commands_with_db() -> Iterator[str]:
    def walk(command: Any, path: list[str]) -> Iterator[str]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        elif any("--db" in getattr(p, "opts", ()) for p in command.params):
            yield " ".join(path)

    return walk(typer.main.get_command(app), [])


def test_every_command_that_takes_db_follows_the_rule() -> None:
    """A new command with ``--db`` is given its kind here, so it is tested below."""
    assert sorted(_commands_with_db()) == sorted([*READING, *RECORDING, *ELSEWHERE])


@pytest.fixture
def missing(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "prices.toml").write_text('[[rule]]\nmodel = "x*"\ninput_per_1m = 1\n')
    (tmp_path / "spans.jsonl").write_bytes(export_line(make_span()))
    place = tmp_path / "ledgers"
    place.mkdir()
    return place, place / "typo" / "deeper" / "ledger.db"


def _args(args: tuple[str, ...], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in args]


@pytest.mark.parametrize("command", READING)
def test_a_reading_command_says_there_is_no_ledger_and_makes_none(
    cli: Any, tmp_path: Path, missing: tuple[Path, Path], command: str
) -> None:
    place, ledger = missing
    result = cli(
        *command.split(), *_args(READING[command], tmp_path), "--db", f"sqlite:///{ledger}"
    )
    assert result.code == 2, result
    assert result.stderr.startswith(f"error: no ledger at {ledger}: nothing was ever recorded")
    assert "a ledger is made by the first call metered into it" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert list(place.iterdir()) == []


@pytest.mark.parametrize("command", RECORDING)
def test_a_recording_command_makes_the_ledger_and_its_folder_and_says_so(
    cli: Any,
    tmp_path: Path,
    missing: tuple[Path, Path],
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", emulator.url)
    _, ledger = missing
    args = _args(RECORDING[command], tmp_path)
    result = cli(*command.split(), *args, "--db", f"sqlite:///{ledger}")
    assert result.code == 0, result
    assert f"created the folder {ledger.parent} for the ledger ledger.db" in result.stderr
    assert ledger.is_file()


def test_run_makes_the_ledger_and_its_folder_and_says_so(
    emulator: OllamaEmulator, missing: tuple[Path, Path]
) -> None:
    _, ledger = missing
    env = {**os.environ, "OLLAMA_HOST": emulator.url}
    db = f"sqlite:///{ledger}"
    done = subprocess.run(
        [sys.executable, "-m", "ollama_meter", "run", "--db", db, "--", sys.executable, "-c", CALL],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"created the folder {ledger.parent} for the ledger ledger.db" in done.stderr
    assert len(open_ledger(db).latest(SpanFilter(), 5)) == 1


def test_serve_makes_the_ledger_and_its_folder(
    emulator: OllamaEmulator, missing: tuple[Path, Path]
) -> None:
    _, ledger = missing
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{ledger}"}
    proc, _ = start_gateway(env, emulator.url)
    try:
        assert ledger.is_file()
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    assert open_ledger(f"sqlite:///{ledger}").latest(SpanFilter(), 1) == []


def test_db_path_says_where_and_makes_nothing(cli: Any, missing: tuple[Path, Path]) -> None:
    place, ledger = missing
    result = cli("db", "path", "--db", f"sqlite:///{ledger}")
    assert (result.code, result.stdout) == (0, f"{ledger}\n")
    assert "there is no ledger there yet" in result.stderr
    assert list(place.iterdir()) == []


def test_a_reading_command_on_the_default_ledger_of_a_first_run_reads_it_as_empty(
    cli: Any,
) -> None:
    """The default ledger, never written yet, is a first run's: lists read it as empty."""
    result = cli("pricing", "list")
    assert result.code == 0 and "no price rules" in result.stdout
