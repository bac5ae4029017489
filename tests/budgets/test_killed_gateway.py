"""A gateway killed (kill -9) while its lease holds a quarter of a budget's room."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_processes import OMETER, logged, start_gateway

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}


def _held(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            conn.execute(
                "SELECT COALESCE(SUM(amount_micros), 0) FROM budget_reservations"
            ).fetchone()[0]
        )


def _chat(url: str, num_predict: int, stream: bool) -> httpx.Response:
    body = {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "a b c d"}],
        "stream": stream,
        "options": {"num_predict": num_predict},
    }
    return httpx.post(f"{url}/api/chat", json=body, headers=SALES, timeout=60)


def test_a_killed_gateways_lease_is_held_until_the_next_gateway_recovers_its_calls(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """Meanwhile the room it held is refused to others (never admitted twice); the next
    process on its host records its calls as interrupted and frees the room at once."""
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    for args in (
        ["pricing", "set", "llama3.1:*", "--input-per-1m", "1000", "--output-per-1m", "2000"],
        ["budget", "set", "sales", "--tenant", "acme", "--monthly", "100"],
    ):
        subprocess.run([*OMETER, *args], env=env, check=True, capture_output=True)
    proc, url = start_gateway(env, emulator.url)
    emulator.token_latency = 0.5
    callers = [threading.Thread(target=lambda: _quietly(url), daemon=True) for _ in range(3)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 20
    while len(emulator.requests_to("/api/chat")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    held = _held(db)
    assert 0 < held <= 25_000_000  # a quarter of the room, with the three calls' bounds in it
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    for caller in callers:
        caller.join(timeout=30)
    emulator.token_latency = 0.0
    assert _held(db) == held  # nobody gave it back: it counts as held
    # Another host's process (its own spool and journal: it cannot recover the dead one's
    # calls) is refused the room the dead gateway held: less is admitted, never more.
    elsewhere = Ledger(f"sqlite:///{db}", spool_dir=tmp_path / "elsewhere")
    gate = BudgetGate(elsewhere, tz=ZoneInfo("UTC"))
    now = datetime.now(UTC)
    with pytest.raises(BudgetExceeded, match="held by calls in flight|in flight"):
        gate.admit(
            call_id="x",
            tenant="acme",
            department="sales",
            estimate=Estimate(100_000_000 - held + 1, "USD"),
            now=now,
        )
    gate.settle(
        gate.admit(
            call_id="y",
            tenant="acme",
            department="sales",
            estimate=Estimate(100_000_000 - held - 2_000_000, "USD"),
            now=now,
        )
    )
    elsewhere.dispose()
    again, url = start_gateway(env, emulator.url)  # its host: it recovers the dead one's calls
    try:
        assert _held(db) == 0
        spans = [s for s in logged(env) if s["status"] == "interrupted"]
        assert len(spans) == 3
        # The whole room is there again, less what the interrupted calls were charged.
        spent = sum(int(float(str(s["cost"])) * 1_000_000) for s in logged(env))
        fits = (100_000_000 - spent - 60 * 1000) // 2000
        assert _chat(url, fits, stream=False).status_code == 200
    finally:
        again.terminate()
        again.wait(timeout=20)


def _quietly(url: str) -> None:
    try:
        with httpx.stream(
            "POST",
            f"{url}/api/chat",
            json={
                "model": "llama3.1:8b",
                "messages": [{"role": "user", "content": "a b c d"}],
                "options": {"num_predict": 200},
            },
            headers=SALES,
            timeout=30,
        ) as reply:
            for _ in reply.iter_lines():
                pass
    except httpx.HTTPError:
        pass  # the gateway is gone
