"""``ometer run`` as its program ends: calls still running then are drained, and recorded."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.gateway._drain import STOPPED
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway
from tests.gateway.test_processes import OMETER, logged

LONG = [{"role": "user", "content": "tell me a long story please about many things"}]


def run_as_a_job(program: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``ometer run --dept sales -- python -c PROGRAM`` in a process group of its own, as a
    terminal's foreground job is; its stderr piped."""
    return subprocess.Popen(
        [*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", program],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize("stopped", ["by the drain's end", "by Ctrl-C"])
def test_a_call_still_streaming_when_the_program_exits_is_drained_and_recorded(
    emulator: OllamaEmulator, tmp_path: Path, stopped: str
) -> None:
    """A program that leaves work behind (``job &`` in a script, a daemonised worker): its
    call was still streaming when the program exited. ``ometer run`` waited 15 s for it,
    then exited under it: the call was cut with no answer, its span was neither written
    nor counted ("0 call(s) metered"), only left in the journal for a later start to find
    as ``interrupted``. Now it is drained as ``ometer serve`` drains on SIGTERM: stopped
    when the drain ends with a clear last line, its span written and counted before exit.

    Ctrl-C while ``ometer run`` waits for that work (the background job ignores it, as a
    script's does) did the same harm: ometer ended at once, 130, the call cut with no
    answer, its span only in the journal, no summary. Now it ends the drain there and then:
    each call stopped with a clear last line, its span written, the program's status kept."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    # A drain run out in 2 s (OMETER_DRAIN_TIMEOUT) ends as the default 10 s does, 8 s sooner;
    # the Ctrl-C comes within the default's, however late a loaded machine delivers it.
    drain = "10"
    if stopped == "by the drain's end":
        drain = env["OMETER_DRAIN_TIMEOUT"] = "2"
    ready, outcome, exited = tmp_path / "ready", tmp_path / "outcome", tmp_path / "exited"
    worker = (
        "import pathlib, signal, ollama\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # a background job of a script
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
        f"pathlib.Path({str(exited)!r}).touch()\n"
        "sys.exit(5)\n"
    )
    emulator.token_latency = 1.0  # 25 words: longer than the drain
    proc = run_as_a_job(program, env)
    said = ""
    if stopped == "by Ctrl-C":
        # Once ometer says it drains (Ctrl-C is then its own): half a second after the program
        # went was at times before ometer saw it go, on a loaded machine, and the Ctrl-C
        # reached the program's handler (which ignores it), the drain running its 10 s
        assert proc.stderr is not None
        for line in proc.stderr:
            said += line
            if "(Ctrl-C stops them now)" in line:
                break
        assert exited.exists(), said
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    stderr = said + stderr
    if stopped == "by Ctrl-C":  # the drain (10 s) cut short, not run out
        assert "the drain was cut short" in stderr and "ended after" not in stderr, stderr
    assert proc.returncode == 5, stderr
    (span,) = logged(env)  # in the ledger, not only in a journal for the next start to find
    assert (span["status"], span["department"]) == ("client_abort", "sales")
    assert span["output_tokens"] > 0
    tokens = f"{span['input_tokens']} in / {span['output_tokens']} out tokens"
    assert f"ometer: 1 call(s) metered for default/sales: {tokens}" in stderr
    assert stderr.rstrip().endswith("1 failed"), stderr
    assert outcome.read_text() == STOPPED
    # Why ometer has not ended with its program, and how to end it now.
    waited = f"the program exited; 1 call(s) it left running have up to {drain} s to finish"
    assert f"ometer: {waited} (Ctrl-C stops them now)" in stderr


def test_the_run_gateways_own_pages_are_no_one_elses_window_on_the_ledger(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """``ometer run``'s gateway listens on loopback with no key and no token, for its program:
    every local user could read every tenant's spend from its ``/api/dash``, ``/dashboard``
    and ``/metrics`` (a ledger they may not open themselves) while the program ran. Its
    program never needs them: they are refused, saying where the figures are; its calls and
    Ollama's own routes are served as before."""
    from ollama_meter.cli import run

    options = run.gateway_options(user="dora", origins="")
    gw = app_on(emulator.url, sqlite_url, **dataclasses.asdict(options))
    gw.client.base_url = "http://localhost"  # type: ignore[assignment]  # it takes loopback only
    gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": LONG, "stream": False})
    for page in ("/api/dash", "/dashboard", "/metrics", "/api/dash?token=x"):
        answer = gw.client.get(page)
        assert answer.status_code == 403, page
        assert "ometer report" in answer.text and "default" not in answer.text
    assert gw.client.get("/api/tags").status_code == 200
    assert gw.client.get("/healthz").status_code == 200
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.user) == ("ok", "dora")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_ctrl_c_as_the_program_exits_and_before_the_drain_starts_cuts_the_drain(
    sig: signal.Signals,
    cli: Callable[..., Any],
    emulator: OllamaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that came after the program had exited but before ometer took Ctrl-C for its
    drain was lost (the do-nothing handler the program's run had, then a gap with none): the
    call the program left streaming ran the drain's whole 10 s; only a second Ctrl-C cut it.
    Now it cuts the drain as one that came during it does; so does a SIGTERM (passed on to
    the program gone, it too was lost). It is sent in that gap itself: the moment ometer has
    seen its program end."""
    from ollama_meter.cli import _job as run

    real_wait = subprocess.Popen.wait

    def exited_then_ctrl_c(program: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        code = real_wait(program, timeout)
        os.kill(os.getpid(), sig)  # to ometer alone, not to the call left in the background
        return code

    monkeypatch.setattr(run.subprocess.Popen, "wait", exited_then_ctrl_c)
    out = tmp_path / "out"
    body = json.dumps({"model": "llama3.1:8b", "messages": LONG, "stream": True})
    script = (
        f"curl -sN \"$OLLAMA_HOST/api/chat\" -d '{body}' > {out} &\n"
        f"while [ ! -s {out} ]; do sleep 0.02; done\n"
        "exit 5\n"
    )
    emulator.token_latency = 1.0  # 25 words: longer than the drain
    result = cli(
        "run", "--dept", "sales", "--db", f"sqlite:///{tmp_path / 'l.db'}", "--", "sh", "-c", script
    )
    # the drain (10 s) cut short, not run out
    assert "the drain was cut short" in result.stderr, result.stderr
    assert "ended after" not in result.stderr, result.stderr
    assert result.code == 5, result.stderr
    assert "ometer: 1 call(s) metered for default/sales" in result.stderr
    assert result.stderr.rstrip().endswith("1 failed"), result.stderr
    deadline = time.monotonic() + 5  # curl writes the last line it was sent, and ends
    while STOPPED not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert STOPPED in out.read_text()


def _controlling(terminal: int) -> Callable[[], None]:
    """A child's set-up making ``terminal`` its controlling terminal (its session's first):
    its process group is then the terminal's foreground job, which a Ctrl-C typed there
    reaches whole."""

    def take() -> None:
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    return take


@pytest.mark.parametrize(
    ("sig", "typed"),
    [
        (signal.SIGQUIT, b"\x1c"),
        (signal.SIGINT, b"\x03"),
        (signal.SIGINT, None),
        (signal.SIGQUIT, None),
        (signal.SIGUSR1, None),
        (signal.SIGUSR2, None),
    ],
    ids=[
        "ctrl-backslash",
        "ctrl-c",
        "int-to-ometer",
        "quit-to-ometer",
        "usr1-to-ometer",
        "usr2-to-ometer",
    ],
)
def test_a_signal_that_would_end_ometer_alone_is_the_programs_and_its_calls_are_metered(
    emulator: OllamaEmulator, tmp_path: Path, sig: signal.Signals, typed: bytes | None
) -> None:
    """Ctrl-\\ (SIGQUIT) reaches the terminal's whole foreground group, as Ctrl-C does: a JVM
    prints its threads and goes on, and many programs take SIGUSR1 or SIGUSR2 (reopen the logs,
    say progress) sent to the job. ``ometer run`` left them at their default: ometer and its
    gateway ended at once (a core dump for Ctrl-\\), with no summary, and the program went on
    pointed at a gateway no longer there, its next calls refused. Now Ctrl-\\ is the
    program's to decide, as Ctrl-C is, and SIGUSR1 or SIGUSR2 sent to ometer is passed on, as
    SIGTERM is. A SIGINT or SIGQUIT sent to ometer with no terminal (``docker run`` without
    ``-t`` passes a Ctrl-C to the container's first process alone) was never passed on: the
    program did not hear it. Each way, the program hears it once, and its gateway meters
    what it still does."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    ready, go = tmp_path / "ready", tmp_path / "go"
    program = (
        "import pathlib, signal, sys, time, ollama\n"
        f"signal.signal({int(sig)}, lambda *_: print('heard', file=sys.stderr, flush=True))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.02)\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': 'hi'}])\n"
    )
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", program],
            env=env,
            stdin=terminal if typed else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # no terminal, or (typed) this one its own
            preexec_fn=_controlling(terminal) if typed else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if typed:
            os.write(main, typed)
        else:
            os.kill(proc.pid, sig)
        time.sleep(0.3)
        go.touch()
        _, stderr = proc.communicate(timeout=120)
    finally:
        os.close(main)
        os.close(terminal)
    assert proc.returncode == 0, stderr
    assert stderr.count("heard") == 1, stderr
    (span,) = logged(env)
    assert (span["status"], span["department"]) == ("ok", "sales")
    assert "ometer: 1 call(s) metered for default/sales" in stderr
