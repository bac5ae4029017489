"""Structured logs: JSON lines when asked, through logging only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter import configure_logging


def test_json_lines_with_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        logging.getLogger("ollama_meter.test").info("hello %s", "there", extra={"span_id": "01ABC"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("ollama_meter.test").exception("it broke")
    finally:
        configure_logging()
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (first["level"], first["logger"], first["message"], first["span_id"]) == (
        "info",
        "ollama_meter.test",
        "hello there",
        "01ABC",
    )
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_cli_alert_log_is_json_when_asked(tmp_path: Path) -> None:
    from ollama_meter.testing import OllamaEmulator

    with OllamaEmulator() as emu:
        env = {
            **os.environ,
            "OLLAMA_HOST": emu.url,
            "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
            "OMETER_LOG_FORMAT": "json",
            "DEPARTMENT_BUDGETS": '{"ops": {"daily": 0.000001, "soft": true}}',
        }
        run = [sys.executable, "-m", "ollama_meter"]
        subprocess.run(
            [*run, "pricing", "set", "*", "--per-request", "1"],
            env=env,
            check=True,
            capture_output=True,
        )
        done = subprocess.run(
            [*run, "chat", "--dept", "ops", "-m", "llama3.1:8b", "hi"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    alerts = [r for r in records if r["logger"] == "ollama_meter.alerts"]
    assert [r["message"].split(" crossed ")[1][:4] for r in alerts] == ["75%:", "90%:", "100%"]
    assert all(r["level"] == "warning" for r in alerts)


def test_a_line_logged_after_stderr_was_replaced_goes_to_the_stderr_of_the_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread still at work (an alert being sent) after an in-process command's stderr was
    closed and replaced wrote to the closed stream: "--- Logging error ---" and a traceback."""
    import io

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging()
    try:
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("ollama_meter.test").warning("budget alert: %s", "late")
    finally:
        configure_logging()
    assert second.getvalue() == "WARNING ollama_meter.test: budget alert: late\n"
