"""``ometer run`` and a signal sent to its whole process group: the program is in it, so the
signal reaches the program already; ometer passing it on as well made it hear it twice."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_processes import OMETER, logged
from tests.gateway.test_run_endings import _controlling


def _program(sig: int, ready: Path, go: Path) -> str:
    """A program that counts each ``sig`` the system delivers to it (as a C program's handler
    or a JVM's does; Python's own handler would take two close together as one), then makes
    one call once told to go, and says how many it had."""
    return (
        "import os, pathlib, signal, sys, time, ollama\n"
        "r, w = os.pipe()\n"
        "os.set_blocking(w, False)\n"
        "signal.set_wakeup_fd(w)  # a byte for each delivery, written by the C handler\n"
        f"signal.signal({sig}, lambda *_: None)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.02)\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "os.set_blocking(r, False)\n"
        f"print('heard', os.read(r, 100).count({sig}), file=sys.stderr, flush=True)\n"
    )


def _env(emulator: OllamaEmulator, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }


def _heard_once_and_metered(stderr: str, env: dict[str, str]) -> None:
    assert "heard 1\n" in stderr, stderr
    (span,) = logged(env)
    assert (span["status"], span["department"]) == ("ok", "sales")


def _run_line(ready: Path, go: Path) -> str:
    """``ometer run`` of a program counting SIGINTs, as a shell line."""
    program = _program(int(signal.SIGINT), ready, go)
    return shlex.join([*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", program])


def _bash_on(
    terminal: int, script: str, env: dict[str, str], output: int | None = None
) -> subprocess.Popen[bytes]:
    """``bash -c script`` as the first process of a session whose controlling terminal is
    ``terminal`` (as a login shell is), its output there unless told otherwise."""
    return subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdin=terminal,
        stdout=terminal if output is None else output,
        stderr=terminal if output is None else subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_controlling(terminal),  # noqa: PLW1509
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name
)
def test_a_signal_to_ometers_process_group_reaches_the_program_once(
    emulator: OllamaEmulator, tmp_path: Path, sig: signal.Signals
) -> None:
    """`timeout` sends its signal to the command and then to its whole group; a supervisor
    or `kill -TERM -PGID` stops a job by its group. With no terminal the program heard it
    from the group and again from ometer, twice; now once, and its call is metered."""
    env = _env(emulator, tmp_path)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(
        [*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", _program(sig, ready, go)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, no terminal: as a service's or a job's
    )
    _wait_for(ready, proc)
    os.killpg(proc.pid, sig)
    time.sleep(0.3)
    go.touch()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    _heard_once_and_metered(stderr, env)


def test_kill_int_percent_1_on_a_background_run_reaches_the_program_once(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """An interactive shell (job control on a terminal) runs `ometer run -- PROGRAM &`, then
    `kill -INT %1`: the shell signals the job's process group, ometer and the program alike.
    ometer, not the terminal's foreground, passed it on too: the program heard it twice."""
    env = _env(emulator, tmp_path)
    ready, go = tmp_path / "ready", tmp_path / "go"
    run = _run_line(ready, go)
    script = (
        f"set -m\n{run} </dev/null 2>{shlex.quote(str(tmp_path / 'err'))} &\n"
        f"while [ ! -e {shlex.quote(str(ready))} ]; do sleep 0.02; done\n"
        "kill -INT %1\nsleep 0.3\n"
        f"touch {shlex.quote(str(go))}\nwait %1\necho status $?\n"
    )
    main, terminal = pty.openpty()
    try:
        shell = _bash_on(terminal, script, env, output=subprocess.PIPE)
        said = shell.communicate(timeout=120)[0].decode()
    finally:
        os.close(main)
        os.close(terminal)
    stderr = (tmp_path / "err").read_text()
    assert "status 0" in said, (said, stderr)
    _heard_once_and_metered(stderr, env)


def test_ctrl_z_stops_the_job_fg_goes_on_and_the_program_reads_its_terminal(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """The program in a group of its own must still be the terminal's job as it was in
    ometer's: Ctrl-Z typed stops it and the shell sees the job stopped, `fg` continues it,
    and it reads a line typed on the terminal (a read from a group not in the foreground
    would stop it). A Ctrl-C typed once it is continued reaches it once."""
    env = _env(emulator, tmp_path)
    ready, go = tmp_path / "ready", tmp_path / "go"
    program = (
        "import os, pathlib, signal, sys, time, ollama\n"
        "r, w = os.pipe()\n"
        "os.set_blocking(w, False)\n"
        "signal.set_wakeup_fd(w)\n"
        "signal.signal(signal.SIGINT, lambda *_: None)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.02)\n"
        "line = sys.stdin.readline().strip()\n"
        "ollama.chat(model='llama3.1:8b', messages=[{'role': 'user', 'content': line}])\n"
        "os.set_blocking(r, False)\n"
        "print('heard', os.read(r, 100).count(signal.SIGINT), 'read', line, file=sys.stderr)\n"
    )
    run = shlex.join([*OMETER, "run", "--dept", "sales", "--", sys.executable, "-c", program])
    err = shlex.quote(str(tmp_path / "err"))
    script = f"set -m\n{run} 2>{err}\necho stopped $?\nfg >/dev/null\necho status $?\n"
    main, terminal = pty.openpty()
    said = b""

    def read_until(text: bytes) -> None:
        """What the terminal shows until ``text``: a minute at most, and no longer than the
        shell runs (a read with nothing to read blocked for good)."""
        nonlocal said
        deadline = time.monotonic() + 60
        while text not in said and time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                said += os.read(main, 1000)
            elif shell.poll() is not None:
                break

    def job_in_front() -> None:
        """Until the terminal's foreground is the job again (after `fg`), not the shell: a
        Ctrl-C typed while the shell had it (the job stopped) ended the shell."""
        deadline = time.monotonic() + 60
        while os.tcgetpgrp(main) == shell.pid and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        shell = _bash_on(terminal, script, env)
        _wait_for(ready, shell)  # type: ignore[arg-type]
        os.write(main, b"\x1a")  # Ctrl-Z
        read_until(b"stopped ")
        job_in_front()
        os.write(main, b"\x03")  # Ctrl-C, once `fg` has continued it
        go.touch()
        os.write(main, b"hello\n")
        read_until(b"status ")
        read_until(b"\n")
        shell.wait(timeout=60)
    finally:
        os.close(main)
        os.close(terminal)
    stderr = (tmp_path / "err").read_text()
    assert b"stopped 148" in said and b"status 0" in said, (said, stderr)
    assert "heard 1 read hello" in stderr, stderr
    (span,) = logged(env)
    assert (span["status"], span["department"]) == ("ok", "sales")


def test_a_script_without_job_control_keeps_its_terminal_while_a_run_goes_on_beside_it(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A script (no job control: `ometer run` in the script's own group) runs `ometer run --
    PROGRAM &` and reads a line from its terminal meanwhile. Had ometer handed the terminal to
    its program's group, as it does for a job of its own, the script's read would have
    stopped it (SIGTTIN) for good; in a group it does not lead, ometer leaves it alone."""
    env = _env(emulator, tmp_path)
    ready, go = tmp_path / "ready", tmp_path / "go"
    run = _run_line(ready, go)
    err = shlex.quote(str(tmp_path / "err"))
    script = (
        f"set +m\n{run} </dev/null 2>{err} &\n"
        f"while [ ! -e {shlex.quote(str(ready))} ]; do sleep 0.02; done\nsleep 0.3\n"
        "read line\necho got $line\nwait\n"
    )
    main, terminal = pty.openpty()
    said = b""
    try:
        shell = _bash_on(terminal, script, env)
        _wait_for(ready, shell)  # type: ignore[arg-type]
        time.sleep(0.3)
        os.write(main, b"hello\n")
        deadline = time.monotonic() + 20
        while b"got " not in said and time.monotonic() < deadline and shell.poll() is None:
            ready_fds = select.select([main], [], [], 0.2)[0]
            if ready_fds:
                said += os.read(main, 1000)
        go.touch()
        shell.wait(timeout=60)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        os.close(main)
        os.close(terminal)
    assert b"got hello" in said, said
    (span,) = logged(env)
    assert (span["status"], span["department"]) == ("ok", "sales")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_program_whose_ometer_is_killed_outright_is_told_to_end(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """`kill -9 %1` reached the program too while it shared ometer's group; in a group of its
    own it went on with its gateway gone, every call refused. It is sent SIGTERM now."""
    ready, told, stop = tmp_path / "ready", tmp_path / "told", tmp_path / "stop"
    program = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: pathlib.Path({str(told)!r}).touch())\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(stop)!r}).exists():  # a test that failed ends it\n"
        "    time.sleep(0.02)\n"
    )
    proc = subprocess.Popen(
        [*OMETER, "run", "--", sys.executable, "-c", program],
        env=_env(emulator, tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(ready, proc)  # type: ignore[arg-type]
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not told.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.touch()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert told.exists()
