"""The gateway as real processes: kill -9 loses no completed call, SIGTERM drains, ometer run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import ollama
import pytest

from ollama_meter.testing import OllamaEmulator
from tests._process_output import keep
from tests.cli.test_run_program import foreground

OMETER = [sys.executable, "-m", "ollama_meter"]
HEARING = [
    sys.executable,
    "-c",
    "import runpy, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "sys.argv[0] = 'ometer'; runpy.run_module('ollama_meter', run_name='__main__')",
]
"""``ometer`` as started from a terminal, which hears a hang-up: a test run under nohup (CI)
hands its children SIGHUP ignored, and ometer keeps an ignored one ignored."""
HI = [{"role": "user", "content": "hello"}]


def announced_url(proc: subprocess.Popen[Any], output: Callable[[], str]) -> str:
    """The URL of an ``ometer serve --port 0`` once /healthz answers there.

    The port is the one its start-up line names (``output()``: what it wrote so far): it
    bound it itself, so no other program can take it between a test's choice and the bind.
    """
    deadline = time.monotonic() + 60  # a busy machine: a wait, not a measure
    url = None
    while True:
        if url is None and (said := re.search(r"ometer gateway on \S+:(\d+) ", output())):
            url = f"http://127.0.0.1:{said[1]}"
        if url is not None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return url
        assert proc.poll() is None, output()
        assert time.monotonic() < deadline, f"gateway did not come up: {output()}"
        time.sleep(0.05)


def written(file: BinaryIO) -> Callable[[], str]:
    """What a child process wrote so far to ``file`` (read without moving its offset)."""
    return lambda: os.pread(file.fileno(), 1 << 20, 0).decode(errors="replace")


def start_gateway(
    env: dict[str, str], upstream: str, *options: str, host: str = "127.0.0.1"
) -> tuple[subprocess.Popen[str], str]:
    """``ometer serve`` as its own process; returns it and its URL once /healthz answers.

    Its output goes to a file nothing needs to drain (a pipe nobody read blocked a
    gateway that logged a lot); a test that fails shows its end (tests/_process_output.py)."""
    with tempfile.TemporaryFile() as output:  # the gateway's copy outlives this one
        proc = subprocess.Popen(
            [*HEARING, "serve", "--host", host, "--port", "0", "--upstream", upstream, *options],
            env=env,
            stdout=output,
            stderr=output,
            text=True,
        )
        keep(f"the gateway {proc.pid} ({' '.join(['ometer serve', upstream, *options])})", output)
        return proc, announced_url(proc, written(output))


def logged(env: dict[str, str]) -> list[dict[str, object]]:
    out = subprocess.run(
        [*OMETER, "log", "--json", "--limit", "1000"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(out.stdout))


def test_kill_9_right_after_the_answers_loses_no_span(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    proc, url = start_gateway(env, emulator.url)
    client = ollama.Client(host=url)
    completed = 0
    for i in range(30):
        if i % 2:
            list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
        else:
            client.chat(model="llama3.1:8b", messages=HI)
        completed += 1
    proc.send_signal(signal.SIGKILL)  # no chance to flush anything
    proc.wait(timeout=10)
    spans = logged(env)
    assert len(spans) == completed == 30
    assert {s["status"] for s in spans} == {"ok"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_drains_an_in_flight_stream(
    emulator: OllamaEmulator, tmp_path: Path, signum: int
) -> None:
    """SIGHUP (the terminal of an ``ometer serve`` gone: an ssh session dropped) drains as
    SIGTERM does; it killed the gateway on the spot, cutting every call in flight."""
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    proc, url = start_gateway(env, emulator.url)
    emulator.token_latency = 0.05
    received: list[str] = []
    first = threading.Event()

    def stream() -> None:
        for chunk in ollama.Client(host=url).chat(model="llama3.1:8b", messages=HI, stream=True):
            received.append(chunk.message.content or "")
            first.set()
            if chunk.done:
                received.append("<done>")

    reader = threading.Thread(target=stream)
    try:
        reader.start()
        assert first.wait(10)
        proc.send_signal(signum)
        reader.join(timeout=30)
        assert proc.wait(timeout=30) == 0  # exits after draining, a clean stop
    finally:
        emulator.token_latency = 0.0
    assert received[-1] == "<done>"
    (span,) = logged(env)
    assert span["status"] == "ok"


def test_ometer_run_meters_a_legacy_script(emulator: OllamaEmulator, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OPENAI_API_BASE": f"{emulator.url}/v1",  # openai before 1.0, LangChain
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    script = (
        "import os, sys, ollama\n"
        "assert os.environ['OLLAMA_HOST'] != " + repr(emulator.url) + "\n"
        "assert os.environ['OPENAI_API_BASE'] == os.environ['OLLAMA_HOST'] + '/v1'\n"
        "assert os.environ['OPENAI_BASE_URL'].endswith('/v1')\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': 'monthly summary'}])\n"
        "legal = ollama.Client(headers={'X-Ometer-Department': 'legal'})\n"
        "legal.chat(model='qwen2.5:7b', messages=[{'role': 'user', 'content': 'and again'}])\n"
        "sys.exit(7)\n"
    )
    done = subprocess.run(
        [*OMETER, "run", "--dept", "finance", "--user", "dora", "--", sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,  # a gateway and a Python child start: a minute on a loaded machine
        check=False,
    )
    assert done.returncode == 7, done.stderr
    spans = logged(env)
    assert [(s["department"], s["user"], s["source"]) for s in spans] == [
        ("legal", "dora", "gateway"),
        ("finance", "dora", "gateway"),
    ]
    # Every call its gateway metered, whoever the program charged it to.
    tokens_in = sum(s["input_tokens"] for s in spans)
    tokens_out = sum(s["output_tokens"] for s in spans)
    assert (
        f"ometer: 2 call(s) metered for default/finance: {tokens_in} in / {tokens_out} out tokens"
        in done.stderr
    )
    not_a_program = subprocess.run(
        [*OMETER, "run", "--", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not_a_program.returncode == 126  # as a shell has it
    assert not_a_program.stderr.strip().endswith(
        f"cannot run {tmp_path}: it is a folder, not a program"
    )
    missing = subprocess.run(
        [*OMETER, "run", "--", str(tmp_path / "nothing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 127
    assert missing.stderr.strip().endswith(f"no such program: {tmp_path / 'nothing'}")


def test_keys_commands(cli, db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    created = cli("keys", "create", "--tenant", "acme", "--dept", "sales", "--name", "crm-bot")
    assert (
        created.code == 0
        and created.stdout.startswith("om_")
        and "shown only this once" in created.stderr
    )
    listed = json.loads(cli("keys", "list", "--json").stdout)
    assert [(k["name"], k["tenant"], k["department"], k["revoked"]) for k in listed] == [
        ("crm-bot", "acme", "sales", False)
    ]
    assert created.stdout.strip() not in cli("keys", "list").stdout
    assert cli("keys", "revoke", str(listed[0]["id"])).code == 0
    assert json.loads(cli("keys", "list", "--json").stdout)[0]["revoked"] is True
    assert "no live key" in cli("keys", "revoke", str(listed[0]["id"])).stderr


def test_ometer_run_leaves_signals_to_its_program(emulator: OllamaEmulator, tmp_path: Path) -> None:
    """Ctrl-C goes to the whole foreground group: the program decides what it means, and the
    gateway meters what the program still does; a SIGTERM to ometer is passed on to it; a
    program killed by a signal ends ometer as a shell reports it (128 + the signal). A hang-up
    (the terminal gone) is the program's to take too: it killed ometer and its gateway on the
    spot, and what the program did next went unmetered."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, sys, time, ollama\n"
        "got = []\n"
        "signal.signal(signal.SIGINT, lambda *_: got.append('INT'))\n"
        "signal.signal(signal.SIGTERM, lambda *_: got.append('TERM'))\n"
        "signal.signal(signal.SIGHUP, lambda *_: got.append('HUP'))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "while not got:\n"
        "    time.sleep(0.01)\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': got[0]}])\n"
        "sys.exit(3)\n"
    )

    def started(*program: str) -> subprocess.Popen[str]:
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [*HEARING, "run", "--dept", "finance", "--", *program],  # hangs up, even under nohup
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group, as a terminal's foreground job is
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the program did not start"
            time.sleep(0.02)
        return proc

    ctrl_c = started(sys.executable, "-c", script)
    os.killpg(ctrl_c.pid, signal.SIGINT)
    _, stderr = ctrl_c.communicate(timeout=60)
    assert ctrl_c.returncode == 3, stderr
    assert "1 call(s) metered" in stderr

    terminated = started(sys.executable, "-c", script)
    terminated.send_signal(signal.SIGTERM)  # ometer alone, as a service manager might
    _, stderr = terminated.communicate(timeout=60)
    assert terminated.returncode == 3, stderr
    assert [s["status"] for s in logged(env)] == ["ok", "ok"]

    hung_up = started(sys.executable, "-c", script)
    os.killpg(hung_up.pid, signal.SIGHUP)  # the terminal closed: the whole group has it
    _, stderr = hung_up.communicate(timeout=60)
    assert hung_up.returncode == 3, stderr
    assert "1 call(s) metered" in stderr
    assert [s["status"] for s in logged(env)] == ["ok", "ok", "ok"]

    killed = started(
        sys.executable,
        "-c",
        f"import os, pathlib; pathlib.Path({str(ready)!r}).touch(); os.kill(os.getpid(), 9)",
    )
    _, stderr = killed.communicate(timeout=60)
    assert killed.returncode == 128 + signal.SIGKILL, stderr


def test_a_sigterm_that_comes_as_the_program_starts_is_passed_on_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ometer run`` put its handlers in place after starting the program: a service manager's
    SIGTERM in between ended ometer alone (its own handler), its gateway with it, and left
    the program running, unmetered. Here the SIGTERM comes the moment the program exists."""
    from ollama_meter.cli import _job as run, _terminate

    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def start_then_terminate(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, before Popen returns
        return started[-1]

    monkeypatch.setattr(run.subprocess, "Popen", start_then_terminate)
    before = signal.signal(signal.SIGTERM, _terminate)  # as `ometer` has it
    try:
        code = foreground([sys.executable, "-c", "import time; time.sleep(60)"], {})
    finally:
        signal.signal(signal.SIGTERM, before)
        for program in started:
            if program.poll() is None:
                program.kill()
                program.wait()
    assert code == 128 + signal.SIGTERM  # the program got it, and ended as it says
    assert started[0].returncode == -signal.SIGTERM


def test_a_flood_of_idle_connections_leaves_calls_room_to_reach_ollama(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """Under an open-file limit of 96, 150 idle connections took every descriptor: a call on
    a connection opened before them was answered 'cannot reach Ollama ... Too many open
    files' three times over, and the breaker then refused calls to a healthy Ollama. (The
    caller's own idle connection, the oldest, is let go for the flood's: it calls on a new
    one, for which the flood's oldest is let go.)"""
    import socket

    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    few_files = (  # soft and hard: the gateway cannot raise it
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'ollama_meter', *sys.argv[1:]])"
    )
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            [sys.executable, "-c", few_files, "serve", "--port", "0", "--upstream", emulator.url],
            env=env,
            stdout=output,
            stderr=output,
        )
        url = announced_url(proc, written(output))
        port = int(url.rsplit(":", 1)[1])
        caller = httpx.Client(base_url=url, timeout=30)
        try:
            assert caller.get("/healthz").status_code == 200  # kept open, before the flood
            idle = []
            for _ in range(150):
                with contextlib.suppress(OSError):  # refused ones may be reset
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            _settle_files(proc.pid)  # the gateway took all it would
            try:
                for _ in range(3):
                    reply = caller.post(
                        "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
                    )
                    assert reply.status_code == 200, reply.text
            finally:
                for sock in idle:
                    sock.close()
        finally:
            caller.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        stderr = written(output)()
    assert [(s["status"], s["error_type"]) for s in logged(env)] == [("ok", None)] * 3
    assert "let a connection go that was waiting on its caller" in stderr
    assert "Too many open files" not in stderr


def _settle_files(pid: int) -> None:
    """Wait until process ``pid`` has held the same number of open files for a second."""
    deadline = time.monotonic() + 30
    count, since = -1, time.monotonic()
    while time.monotonic() - since < 1 and time.monotonic() < deadline:
        now = len(os.listdir(f"/proc/{pid}/fd"))
        if now != count:
            count, since = now, time.monotonic()
        time.sleep(0.05)


def test_a_script_with_no_interpreter_line_is_run_by_the_shell_as_execvp_runs_it(
    tmp_path: Path,
) -> None:
    """A legacy shell script with no ``#!`` line: ``nice``, ``env`` and ``timeout`` run it (by
    ``/bin/sh``, as POSIX ``execvp`` does), ``ometer run`` refused it: 'Exec format error',
    126, the job unmetered. Found by name on PATH too; a file of no text still cannot run."""

    script = tmp_path / "legacy-job"
    script.write_text('echo "$0 $1" > "$2"\nexit 4\n')
    script.chmod(0o755)
    said = tmp_path / "said"
    assert foreground([str(script), "one", str(said)], {}) == 4
    assert said.read_text() == f"{script} one\n"
    said.unlink()
    on_path = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    assert foreground(["legacy-job", "two", str(said)], on_path) == 4
    assert said.read_text() == f"{script} two\n"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x00\x00broken")
    garbage.chmod(0o755)
    with pytest.raises(Exception, match="cannot run .*garbage: Exec format error") as raised:
        foreground([str(garbage)], {})
    assert getattr(raised.value, "exit_code", None) == 126
