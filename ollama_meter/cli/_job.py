"""``ometer run``'s program as a shell runs a job: its own process group, the terminal handed
to it while ometer has it, its stops and signals passed through once, its exit status."""

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from ollama_meter.errors import ValidationError

_GROUPS = (signal.SIGINT, signal.SIGQUIT)
"""What a terminal sends its whole foreground group (Ctrl-C, Ctrl-\\): passed on to the
program's group, as the terminal would."""
_PASSED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
"""Signals sent to ``ometer`` that would end it, passed on to its program."""
_ENDING = (*_GROUPS, signal.SIGTERM, signal.SIGHUP)
"""Signals that, once the program has exited, cut the gateway's drain."""


class _Job:
    """ometer's signals from before its program starts until its gateway has drained.

    The program runs in a process group of its own, as a shell runs a job, so a signal sent
    to ometer's group (``kill -INT %1`` on a backgrounded ``ometer run``, ``timeout``, a
    supervisor's ``kill -TERM -PGID``) reaches it once, passed on by ometer: it shared
    ometer's group, heard it from there and again from ometer, and a program that counts
    them (Python's second Ctrl-C interrupts its clean-up) did otherwise than run alone.
    While ometer is its terminal's foreground job the program is (``tcsetpgrp``), so Ctrl-C,
    Ctrl-\\ and Ctrl-Z reach the program alone, and it may read the terminal; stopped (Ctrl-Z,
    or a read from the background), ometer stops its own group too, so the shell sees the
    job stopped, and on ``fg`` or ``bg`` gives the terminal back (on ``fg``) and continues
    it. A SIGTERM, SIGHUP, SIGUSR1 or SIGUSR2 sent to ``ometer`` is passed on (as ``timeout``
    passes its signal): each ended ometer and its gateway by default, and what the program
    did after it went unmetered (its calls refused). On Linux the program is told SIGTERM if
    ometer is killed outright (``kill -9 %1`` reached both when they shared a group).

    Once the program has exited (or could not start), a Ctrl-C, Ctrl-\\, SIGTERM or SIGHUP calls
    ``cut``: the drain ends there and then, or as it begins (each call stopped with a clear
    last answer, its span written); they ended ometer under it, each call cut with no answer
    and its span left in the journal. One set of handlers for both: one that came between
    the two (the program gone, the drain not yet begun) was lost, the drain ran its 10 s.

    In place before the program starts: a SIGTERM in between ended ometer alone and left the
    program running, unmetered. Ctrl-C gets a handler, not SIG_IGN, which the program would
    inherit (unless ometer has it so: a shell's background job); a signal ometer ignores
    (a hang-up under nohup) is left ignored for the program to inherit.
    """

    def __init__(self, cut: Callable[[], None] = lambda: None) -> None:
        self.cut = cut
        self.program: subprocess.Popen[bytes] | None = None
        self.early: list[int] = []  # signals that came while the program was being started
        self.ended = False
        self._terminal: int | None = None
        self._apart = True  # the program in a group of its own
        self._before: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> "_Job":
        taken = [signal.SIGTERM]
        taken += [s for s in (*_GROUPS, *_PASSED) if signal.getsignal(s) != signal.SIG_IGN]
        self._before = {sig: signal.signal(sig, self._signalled) for sig in {*taken}}
        self._before[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._continued)
        self._terminal = _terminal()
        # On a terminal, a group of its own only where ometer was given one (a job of a shell
        # with job control): in a script's group (no job control) the terminal is the
        # script's, and a program handed it would take Ctrl-C and the terminal from it.
        self._apart = self._terminal is None or os.getpgrp() == os.getpid()
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None

    def _signalled(self, sig: int, _frame: object) -> None:
        program = self.program
        if self.ended or (program is not None and program.returncode is not None):
            if sig in _ENDING:
                self.cut()
        elif sig in _GROUPS and not self._apart and self._ours():
            pass  # from the terminal to the group the program shares: it has it too
        elif program is None:
            self.early.append(sig)
        else:
            self._pass(program, sig)

    def _pass(self, program: "subprocess.Popen[bytes]", sig: int) -> None:
        """``sig`` to the program: a terminal's to its whole group, as the terminal sends it."""
        try:
            if sig in _GROUPS and self._apart:
                os.killpg(program.pid, sig)
            else:
                program.send_signal(sig)
        except ProcessLookupError:  # gone meanwhile: its status tells
            pass

    def _continued(self, _sig: int, _frame: object) -> None:
        """``fg`` on a job started with ``&``: the terminal is the program's from now on."""
        if self.program is not None and not self.ended:
            self._give()

    def foreground(self, command: list[str], env: dict[str, str]) -> int:
        """Run ``command``; its exit status, as a shell gives it (ended by a signal: 128 + it)."""
        try:
            self.program = _started(command, env, apart=self._apart)
            self._give()
            for sig in self.early:
                self._pass(self.program, sig)
            code = self._waited(self.program)
        finally:
            self.ended = True
            self._take()
        return 128 - code if code < 0 else code

    def _waited(self, program: "subprocess.Popen[bytes]") -> int:
        """Wait for the program to end, taking its stops as a shell takes a job's (not on
        macOS, where Python has no ``waitid``: there a stopped program waits for ``fg``)."""
        while hasattr(os, "waitid"):
            seen = os.waitid(os.P_PID, program.pid, os.WEXITED | os.WSTOPPED | os.WNOWAIT)
            if seen is None or seen.si_code != os.CLD_STOPPED:
                return program.wait()  # ended: reaped as Popen reaps it
            os.waitid(os.P_PID, program.pid, os.WSTOPPED | os.WNOHANG)  # the stop, taken
            if self._terminal is None or not self._apart:
                continue  # stopped by a signal sent to it (or its group): whoever sent it goes on
            wanted = seen.si_status in (signal.SIGTTIN, signal.SIGTTOU)
            if not (wanted and self._ours()):  # Ctrl-Z, or the terminal wanted while not ours
                self._take()
                os.killpg(os.getpgrp(), _stop(seen.si_status))  # the job stopped, as it was
            self._give()
            os.killpg(program.pid, signal.SIGCONT)
        return program.wait()

    def _ours(self) -> bool:
        """Whether ometer's group is its terminal's foreground job."""
        try:
            return self._terminal is not None and os.tcgetpgrp(self._terminal) == os.getpgrp()
        except OSError:
            return False

    def _give(self) -> None:
        """The terminal to the program's group, while ometer's has it."""
        if self.program is not None and self._apart and self._ours():
            _foreground(self._terminal, self.program.pid)

    def _take(self) -> None:
        """The terminal back to ometer's group, if the program's has it."""
        if self.program is None or self._terminal is None or not self._apart:
            return
        try:
            held = os.tcgetpgrp(self._terminal) == self.program.pid
        except OSError:
            return
        if held:
            _foreground(self._terminal, os.getpgrp())


def _stop(sig: int) -> int:
    """The signal that stops ometer's group as the program was stopped, so the shell says the
    same (``Stopped``, status 148 for Ctrl-Z); SIGSTOP where ometer would not stop by it."""
    same = sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    return sig if same and signal.getsignal(sig) == signal.SIG_DFL else signal.SIGSTOP


def _foreground(terminal: int | None, group: int) -> None:
    """``tcsetpgrp`` with SIGTTOU held off: a process that just lost the foreground (or never
    had it) would be stopped by it."""
    if terminal is None:
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(terminal, group)
    except OSError:
        pass  # the terminal went away (a hang-up): nothing to hand over
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _terminal() -> int | None:
    """ometer's controlling terminal, opened; None with none (a service, a container's first
    process, cron)."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def _orphan_signal() -> Callable[[], None] | None:
    """Linux: the program is told SIGTERM when ometer dies (``prctl(PR_SET_PDEATHSIG)``), as
    ``kill -9`` of the group it shared with ometer reached it. Resolved here, before the fork:
    the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    term = int(signal.SIGTERM)
    return lambda: prctl(1, term, 0, 0, 0)  # PR_SET_PDEATHSIG


def _popen(command: list[str], env: dict[str, str], apart: bool) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        command,
        env=env,
        process_group=0 if apart else None,
        preexec_fn=_orphan_signal() if apart else None,  # noqa: PLW1509
    )


def _started(
    command: list[str], env: dict[str, str], *, apart: bool = True
) -> "subprocess.Popen[bytes]":
    """``command`` started as a shell starts it: an executable text file with no ``#!`` line
    (a legacy shell script) is run by ``/bin/sh``, as POSIX ``execvp`` (and so ``nice``,
    ``env``, ``timeout``) runs it; Python alone refused it (Exec format error)."""
    try:
        try:
            return _popen(command, env, apart)
        except OSError as exc:
            script = _shell_script(command[0], env) if exc.errno == errno.ENOEXEC else None
            if script is None:
                raise
            return _popen(["/bin/sh", script, *command[1:]], env, apart)
    except OSError as exc:  # none by that name, not executable, a folder, ...
        raise _not_run(command[0], exc) from None


def _shell_script(program: str, env: dict[str, str]) -> str | None:
    """The file ``program`` names (on PATH when it has no slash), if its first line holds
    no NUL byte: text for a shell, not a binary of another machine (as bash decides)."""
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        return None
    with open(found, "rb") as file:
        head = file.read(80)
    return None if b"\0" in head.split(b"\n", 1)[0] else found


def _not_run(name: str, exc: OSError) -> ValidationError:
    """The error for a program that could not be started, with the status a shell gives
    it (127: not found, 126: found but not runnable), so scripts tell it from the program's.
    The system's word alone (``cannot run : Permission denied`` for an empty name, the same
    for a folder) said neither what was wrong nor what to do."""
    if not name:
        message, status = (
            "the program to run is empty: give its name after --, e.g. ometer run -- python job.py",
            127,
        )
    elif isinstance(exc, FileNotFoundError):
        message, status = f"no such program: {name}", 127
    elif os.path.isdir(name):
        message, status = f"cannot run {name}: it is a folder, not a program", 126
    elif isinstance(exc, PermissionError) and os.path.isfile(name):
        message, status = (
            f"cannot run {name}: it is not executable: chmod +x {name}, or put the program "
            f"that runs it first (e.g. ometer run -- python {name})",
            126,
        )
    else:
        message, status = f"cannot run {name}: {exc.strerror or exc}", 126
    error = ValidationError(message)
    error.exit_code = status
    return error
