"""``ometer run`` as its program ends: calls still running then are drained, and recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ollama_meter.gateway._drain import STOPPED
from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_processes import OMETER, logged

LONG = [{"role": "user", "content": "tell me a long story please about many things"}]


def test_a_call_still_streaming_when_the_program_exits_is_drained_and_recorded(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A program that leaves work behind (``job &`` in a script, a daemonised worker): its
    call was still streaming when the program exited. ``ometer run`` waited 15 s for it,
    then exited under it: the call was cut with no answer, its span was neither written
    nor counted ("0 call(s) metered"), only left in the journal for a later start to find
    as ``interrupted``. Now it is drained as ``ometer serve`` drains on SIGTERM: stopped
    when the drain ends with a clear last line, its span written and counted before exit."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    ready, outcome = tmp_path / "ready", tmp_path / "outcome"
    worker = (
        "import pathlib, ollama\n"
        f"ready, outcome = pathlib.Path({str(ready)!r}), pathlib.Path({str(outcome)!r})\n"
        "try:\n"
        f"    for chunk in ollama.chat(model='llama3.1:8b', messages={LONG!r}, stream=True):\n"
        "        ready.touch()\n"
        "    outcome.write_text('whole')\n"
        "except Exception as exc:\n"
        "    outcome.write_text(getattr(exc, 'error', repr(exc)))\n"
    )
    program = (
        "import pathlib, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\n"
        f"while not pathlib.Path({str(ready)!r}).exists():\n"
        "    time.sleep(0.02)\n"
        "sys.exit(5)\n"
    )
    emulator.token_latency = 1.0  # 25 words: longer than the drain
    done = subprocess.run(
        [*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 5, done.stderr
    (span,) = logged(env)  # in the ledger, not only in a journal for the next start to find
    assert (span["status"], span["department"]) == ("client_abort", "sales")
    assert span["output_tokens"] > 0
    tokens = f"{span['input_tokens']} in / {span['output_tokens']} out tokens"
    assert f"ometer: 1 call(s) metered for default/sales: {tokens}" in done.stderr
    assert done.stderr.rstrip().endswith("1 failed"), done.stderr
    assert outcome.read_text() == STOPPED
