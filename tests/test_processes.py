"""Real ometer processes sharing one ledger file: none may fail, none may be lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.testing import OllamaEmulator

OMETER = [sys.executable, "-m", "ollama_meter"]


def _env(emulator: OllamaEmulator, url: str) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": emulator.url, "OMETER_DB_URL": url}


CALLS_EACH = 2


@pytest.mark.slow
def test_four_parallel_chat_processes_leave_exactly_one_span_per_call(
    emulator: OllamaEmulator, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four at a time, two rounds: the first races to migrate the fresh ledger, the second to
    # write to a made one; each race is the same with 4 processes as with 100, and each
    # process start costs a second on a busy machine (a third round raced as the second did).
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # fresh: the first calls also race to migrate
    env = _env(emulator, url)

    def worker(number: int) -> list[int]:
        codes = []
        for call in range(CALLS_EACH):
            done = subprocess.run(
                [
                    *OMETER,
                    "chat",
                    "--dept",
                    f"d{number}",
                    "-m",
                    "llama3.1:8b",
                    f"call {call} from {number}",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            codes.append(done.returncode)
            assert done.returncode == 0, done.stderr
        return codes

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    assert results == [[0] * CALLS_EACH] * 4
    monkeypatch.setenv("OMETER_DB_URL", url)  # read here: what was written is the processes'
    listing = cli("log", "--json", "--limit", "1000")
    assert listing.code == 0, listing.stderr
    spans = json.loads(listing.stdout)
    assert len(spans) == 4 * CALLS_EACH and len({s["id"] for s in spans}) == 4 * CALLS_EACH
    assert sorted({s["department"] for s in spans}) == ["d0", "d1", "d2", "d3"]
    assert all(s["status"] == "ok" for s in spans)


def test_user_mistakes_never_print_a_traceback(emulator: OllamaEmulator, tmp_path: Path) -> None:
    env = _env(emulator, f"sqlite:///{tmp_path / 'l.db'}")
    for args, env_extra in [
        (["chat", "-m", "missing:1b", "hi"], {}),
        (["log"], {"OMETER_CURRENCY": "dollars"}),
        (["report", "--by", "colour"], {}),
        (["chat", "hi"], {"OLLAMA_HOST": "ftp://x"}),
        (["log"], {"OMETER_DB_URL": "postgresql+nosuchdriver://x/y"}),
    ]:
        done = subprocess.run(
            [*OMETER, *args],
            env={**env, **env_extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().startswith("error:"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_sigterm_mid_stream_still_writes_the_span(tmp_path: Path) -> None:
    import signal
    import time

    url = f"sqlite:///{tmp_path / 'l.db'}"
    with OllamaEmulator(token_latency=0.1) as slow:
        env = _env(slow, url)
        proc = subprocess.Popen(
            [*OMETER, "chat", "--dept", "ops", "-m", "llama3.1:8b", "tell me a long story"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.read(12)  # some of the reply has arrived
        slow.token_latency = 600.0  # the rest waits for the signal, however late it comes
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM
        time.sleep(0.1)
    listing = subprocess.run(
        [*OMETER, "log", "--json"], env=env, capture_output=True, text=True, check=True
    )
    (span,) = json.loads(listing.stdout)
    assert (span["status"], span["token_source"], span["department"]) == (
        "client_abort",
        "estimated",
        "ops",
    )
    assert span["output_tokens"] >= 2
