"""Process-wide state lives on one runtime object: shared while it lives, all closed at reset."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ollama_meter._runtime import Runtime, reset_runtime, runtime
from ollama_meter.config import load_settings
from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.telemetry import telemetry_for
from ollama_meter.upstream import breaker_for


def test_one_part_per_key_until_reset_closes_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "1")
    ledger = open_ledger(url)
    breaker = breaker_for("http://gpu1:11434", threshold=3, reset_after=5.0)
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None
    assert open_ledger(url) is ledger
    assert breaker_for("http://gpu1:11434", threshold=3, reset_after=5.0) is breaker
    assert telemetry_for(load_settings()) is telemetry
    assert asyncio.run(in_thread(threading.current_thread)).name.startswith("ometer-ledger")

    reset_runtime()

    assert telemetry._closed
    fresh = open_ledger(url)
    assert fresh is not ledger
    assert breaker_for("http://gpu1:11434", threshold=3, reset_after=5.0) is not breaker
    assert telemetry_for(load_settings()) is not telemetry
    assert fresh.latest(SpanFilter(), 1) == []  # the new engine works
    reset_runtime()


def test_a_closer_that_fails_does_not_keep_the_others_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    parts = Runtime()
    parts.shared("a", 1, lambda: "first", closed.append)
    parts.shared("b", 1, lambda: "broken", lambda _: 1 / 0)  # type: ignore[func-returns-value]
    parts.shared("c", 1, lambda: "last", closed.append)
    parts.close()
    assert closed == ["last", "first"]  # newest first
    assert "closing b 1 failed" in caplog.text
    assert parts.drop("a") == []


def test_drop_forgets_one_key_or_a_whole_kind() -> None:
    parts = Runtime()
    for key in (1, 2):
        parts.shared("ledger", key, lambda key=key: f"ledger {key}")  # type: ignore[misc]
    parts.shared("breaker", 1, lambda: "breaker")
    assert parts.drop("ledger", 2) == ["ledger 2"]
    assert parts.drop("ledger") == ["ledger 1"]
    assert parts.shared("breaker", 1, lambda: "other") == "breaker"
    assert runtime() is runtime()


@pytest.mark.parametrize(
    "command",
    [
        ["db", "upgrade"],  # a new file: the migrations are written
        ["db", "upgrade", "&&", "log", "--limit", "1"],  # opened by a command that reads
        ["db", "upgrade", "&&", "log", "--limit", "1", "&&", "db", "upgrade"],  # only read
        ["db", "upgrade", "&&", "log", "--limit", "1", "&&", "db", "backup", "copy.db"],
    ],
)
def test_every_ledger_an_ometer_process_opens_is_closed_before_it_exits(
    tmp_path: Path, command: list[str]
) -> None:
    # The process wrapper skips the collector's last pass at exit, so what it shares must be
    # closed first, or SQLite's write-ahead log is left behind (PostgreSQL: a dropped session).
    # `db upgrade` opened a ledger of its own, outside the process's runtime: its connection
    # was never closed, so the migrations stayed in the write-ahead log beside the file
    # (a copy of the file alone lacked them).
    path = tmp_path / "ledger.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{path}"}
    while command:
        first = command[: command.index("&&")] if "&&" in command else command
        command = command[len(first) + 1 :]
        done = subprocess.run(
            [sys.executable, "-m", "ollama_meter", *first],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ledger.db")) == [
            "ledger.db"
        ], first


def test_a_gateway_started_by_ometer_collects_in_short_rounds_and_a_host_program_is_left_alone() -> (
    None
):
    import gc

    from ollama_meter._runtime import SERVING, STARTING, serving

    before = gc.get_threshold()
    frozen = gc.get_freeze_count()  # the suite's own, after collecting (tests/conftest.py)
    try:
        serving()  # the test process set its own collector: serving() leaves it as it is
        assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
        gc.set_threshold(STARTING, *before[1:])  # as `ometer` starts a command
        serving()
        assert gc.get_threshold() == (SERVING, *before[1:])
        assert gc.get_freeze_count() > frozen  # start-up's objects are never walked again
    finally:
        if not frozen:
            gc.unfreeze()
        gc.set_threshold(*before)
