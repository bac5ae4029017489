"""Structured logs: JSON lines when asked, through logging only."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from ollama_meter import _text, configure_logging
from ollama_meter._logging import JsonFormatter, TextFormatter, Throttled


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


ACTED_ON = re.compile(f"[\x00-\x1f{_text.ACTED_ON}]")
"""What a terminal or a log reader acts on: C0 (line breaks, ESC), DEL, C1, bidi controls."""


@given(st.text())
def test_whatever_a_message_quotes_stays_on_its_line_and_is_never_acted_on(quoted: str) -> None:
    """A mail server's reply, an exception's text: what a log line quotes is text from
    outside. A line break in it started a line of its own (a forged ``WARNING ...`` line),
    an escape recoloured the terminal the log was read on."""
    record = logging.makeLogRecord(
        {"name": "ollama_meter.alerts", "levelname": "WARNING", "msg": "refused: %s",
         "args": (quoted,)}
    )  # fmt: skip
    text = TextFormatter().format(record)
    assert text.startswith("WARNING ollama_meter.alerts: refused: ")
    assert not ACTED_ON.search(text), repr(text)
    line = JsonFormatter().format(record)
    assert not ACTED_ON.search(line) and not re.search(f"[{_text.ACTED_ON}]", line), repr(line)
    assert json.loads(line)["message"] == "refused: " + quoted  # nothing lost


def test_a_mail_servers_reply_cannot_forge_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that refuses a recipient with a reply of several lines, one of them made to
    look like ometer's own, had it logged as a line of its own, in green."""
    from datetime import UTC, datetime
    from typing import Any

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    from ollama_meter.budgets import Alert, EmailChannel, deliver
    from ollama_meter.testing import unused_port

    forged = "\x1b[32mWARNING ollama_meter.alerts: all is well\x1b[0m"

    class Refuse(Sink):  # type: ignore[misc]
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, _: Any) -> str:  # fmt: skip
            if address.startswith("gone@"):
                return f"550-5.1.1 no such mailbox\r\n550 {forged}"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    controller = Controller(Refuse(), hostname="127.0.0.1", port=unused_port())
    controller.start()
    configure_logging()
    try:
        channel = EmailChannel(
            "127.0.0.1", controller.port, sender="ometer@example.org",
            recipients=["it@example.org", "gone@example.org"],
        )  # fmt: skip
        alert = Alert(1, 7, "acme", "sales", "month", "2026-11", datetime(2026, 11, 1, tzinfo=UTC),
                      90, 9, 10, "USD")  # fmt: skip
        deliver(alert, [channel], sleep=lambda _: None)
    finally:
        controller.stop()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["WARNING ollama_meter.alerts"] * 2
    assert lines[1].endswith(
        "(550 5.1.1 no such mailbox\\n\\x1b[32mWARNING ollama_meter.alerts: all is well\\x1b[0m)"
    )


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(1, 50)), max_size=60))
def test_a_throttled_count_of_batches_says_every_item_once(
    events: list[tuple[float, int]],
) -> None:
    """Batches of ``count`` items (spans set aside a write): the lines due are at least an
    interval apart, and together with what is still unsaid they count every item once."""
    now = [0.0]
    throttled = Throttled(logging.getLogger("test"), interval=10, clock=lambda: now[0])
    said, times = 0, []
    for gap, count in events:
        now[0] += gap
        if (due := throttled.due("kind", count)) is not None:
            said, times = said + due, [*times, now[0]]
            assert due >= count
    assert all(b - a >= 10 for a, b in itertools.pairwise(times))
    total = sum(count for _, count in events)
    assert throttled.counts.get("kind", 0) == total
    assert said + throttled._unlogged.get("kind", 0) == total
