"""A fleet of real processes: emulators with their own models, `ometer serve` in front, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.gateway.test_processes import OMETER, logged, start_gateway

HI = [{"role": "user", "content": "hello"}]


def start_emulator(models: str, port: int = 0) -> tuple[subprocess.Popen[str], str]:
    """An emulator process on ``port`` (0: a free one it binds itself); it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollama_meter.testing", "--port", str(port), "--models", models],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Ollama emulator listening"), line
    return proc, line.strip().rsplit(" ", 1)[-1]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def states(url: str) -> list[str]:
    return [s["state"] for s in httpx.get(f"{url}/healthz", timeout=5).json()["servers"]]


def wait_until(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_kill_9_of_a_server_fails_its_calls_over_and_it_comes_back(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    first, a = start_emulator("llama3.1:8b,qwen2.5:7b")
    processes.append(first)
    second, b = start_emulator("llama3.1:8b,mistral:7b")
    processes.append(second)
    env = {
        **os.environ,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
        "OMETER_DISCOVERY_INTERVAL": "0.3",
    }
    gateway, url = start_gateway(env, a, "--upstream", b, "--slots", "2")
    processes.append(gateway)
    client = ollama.Client(host=url, timeout=30)
    assert sorted(m.model for m in client.list().models) == [
        "llama3.1:8b",
        "mistral:7b",
        "qwen2.5:7b",
    ]
    client.chat(model="qwen2.5:7b", messages=HI)
    client.chat(model="mistral:7b", messages=HI)
    processes[0].kill()  # kill -9 the server with qwen and one copy of llama
    processes[0].wait(timeout=10)
    for _ in range(4):
        assert client.chat(model="llama3.1:8b", messages=HI).message.content
    with pytest.raises(ollama.ResponseError) as gone:
        client.chat(model="qwen2.5:7b", messages=HI)  # only the dead server had it
    assert gone.value.status_code in (502, 503)
    wait_until(lambda: states(url) == ["down", "up"])
    # Back on its port (the gateway knows it by it): free since the kill, taken again at once.
    processes.append(start_emulator("llama3.1:8b,qwen2.5:7b", int(a.rsplit(":", 1)[1]))[0])
    wait_until(lambda: states(url) == ["up", "up"])
    assert client.chat(model="qwen2.5:7b", messages=HI).message.content
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(timeout=30)
    spans = logged(env)
    hosts = [(s["request_model"], s["upstream_host"], s["status"]) for s in reversed(spans)]
    assert hosts[:2] == [("qwen2.5:7b", a, "ok"), ("mistral:7b", b, "ok")]
    assert hosts[2:6] == [("llama3.1:8b", b, "ok")] * 4
    assert hosts[6][2] == "error" and hosts[7] == ("qwen2.5:7b", a, "ok")
    listed = subprocess.run(
        [*OMETER, "perf", "--by", "department", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert listed[0].endswith(",gateway_queue_p50_ms,gateway_queue_p95_ms")
    assert not listed[1].endswith(",,")  # every gateway call has its queue time
