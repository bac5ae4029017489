"""kill -9 in the middle of calls: every call Ollama received has a span afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.records import PriceRule
from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_processes import logged, start_gateway


def _priced(env: dict[str, str]) -> None:
    """``ometer pricing set '*' --input-per-1m 1000``, written in this process: the processes
    under test are the gateways (one more ``ometer`` process cost a second of CPU)."""
    Ledger(env["OMETER_DB_URL"]).add_price_rules(
        [PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1000))]
    )
    close_ledgers()


def test_kill_9_mid_stream_leaves_interrupted_spans(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    _priced(env)
    proc, url = start_gateway(env, emulator.url)
    finished = [
        httpx.post(f"{url}/api/chat", json={"model": "llama3.1:8b", "stream": False,
                   "messages": [{"role": "user", "content": "done before"}]}, timeout=30)
        for _ in range(2)
    ]  # fmt: skip
    assert [r.status_code for r in finished] == [200, 200]
    emulator.token_latency = 0.5  # every stream is still running when the gateway dies
    started = threading.Barrier(6)

    def hang_on() -> None:
        started.wait()
        try:
            with httpx.stream(
                "POST",
                f"{url}/api/chat",
                json={"model": "llama3.1:8b", "messages": [{"role": "user", "content": "a b c d"}]},
                timeout=30,
            ) as reply:
                for _ in reply.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the gateway is gone

    callers = [threading.Thread(target=hang_on) for _ in range(5)]
    for caller in callers:
        caller.start()
    started.wait()
    deadline = time.monotonic() + 20
    while len(emulator.requests_to("/api/chat")) < 7:  # Ollama has every call
        assert time.monotonic() < deadline
        time.sleep(0.02)
    spans = _killed_then_recovered(proc, callers, emulator, env)
    assert sorted(s["status"] for s in spans) == ["interrupted"] * 5 + ["ok"] * 2
    interrupted = [s for s in spans if s["status"] == "interrupted"]
    assert {s["error_type"] for s in interrupted} == {"interrupted"}
    # The prompt ("a b c d": 7 characters, about 2 tokens) is charged as an estimate.
    assert {(s["input_tokens"], s["token_source"], s["cost"]) for s in interrupted} == {
        (2, "estimated", "0.002000")
    }
    journal = tmp_path / "l.db.spool" / "journal"
    assert list(journal.glob("*.journal")) == []  # handled, and the last gateway left cleanly


def test_the_journal_costs_two_appends_and_is_recovered_once(tmp_path: Path) -> None:
    """In-process: a journal whose owner died is read once; a live one is left alone."""
    from ollama_meter.ledger._journal import Journal
    from tests.factories import make_span

    directory = tmp_path / "journal"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ollama_meter.ledger._journal import Journal\n"
        "from tests.factories import make_span\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "a, b = make_span(), make_span()\n"
        "j.opened(a, 3); j.opened(b, 4); j.closed([a.id])\n"
        "print(b.id, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], check=False,
    )  # fmt: skip
    assert dead.returncode == -signal.SIGKILL
    open_id = dead.stdout.strip()
    mine = Journal(directory)
    mine.opened(make_span(), 1)  # this process's own open call is not an orphan
    with mine.orphans() as orphans:
        assert [(o.span.id, o.input_estimate) for o in orphans] == [(open_id, 4)]
    with mine.orphans() as orphans:
        assert orphans == []
    assert len(list(directory.glob("*.journal"))) == 1  # only this live process's file
    lines = [
        json.loads(line) for line in next(directory.glob("*.journal")).read_text().splitlines()
    ]
    assert len(lines) == 1 and "o" in lines[0]


def test_kill_9_charges_no_call_that_was_still_waiting_for_a_slot(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """With one slot and four callers, ``kill -9`` left four calls in the journal: the next
    gateway recorded all four as interrupted and charged their prompts, though Ollama had
    received one (the other three waited in the gateway's queue and never went out)."""
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    _priced(env)
    proc, url = start_gateway(env, emulator.url, "--slots", "1")
    emulator.token_latency = 0.5  # the one call Ollama has is still running when the gateway dies

    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the gateway is gone
            body = {
                "model": "llama3.1:8b",
                "stream": False,
                "messages": [{"role": "user", "content": "a b c d"}],
            }
            httpx.post(f"{url}/api/chat", json=body, timeout=30)

    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 20
    while (
        "ometer_requests_in_flight 4.0" not in httpx.get(f"{url}/metrics").text
        or not emulator.requests_to("/api/chat")  # the one sent may still be on its way
    ):
        assert time.monotonic() < deadline  # all four opened: one with Ollama, three queued
        time.sleep(0.02)
    assert len(emulator.requests_to("/api/chat")) == 1
    spans = _killed_then_recovered(proc, callers, emulator, env)
    assert [(s["status"], s["upstream_host"], s["cost"]) for s in spans] == [
        ("interrupted", emulator.url, "0.002000")
    ]


def _killed_then_recovered(
    proc: subprocess.Popen[bytes],
    callers: list[threading.Thread],
    emulator: OllamaEmulator,
    env: dict[str, str],
) -> list[dict[str, Any]]:
    """``kill -9`` the gateway, let its callers see it gone, and start the next gateway,
    which records what the dead one left open; the spans then in the ledger."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    for caller in callers:
        caller.join(timeout=30)
    emulator.token_latency = 0.0
    again, _ = start_gateway(env, emulator.url)
    again.terminate()
    again.wait(timeout=20)
    return logged(env)
