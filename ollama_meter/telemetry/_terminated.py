"""A process ended by SIGTERM sends its spans before it dies of it.

A service manager stops a program by SIGTERM (``systemctl stop``, Kubernetes, ``timeout``), and
``with multiprocessing.Pool() as pool:`` ends its workers by it as the block exits
(``Pool.terminate``), as ``Process.terminate()`` ends a process. The signal's default action
killed them at once: no finalizer ran, and the spans of their last calls, waiting for the
exporter's next batch, never left (their ledger rows were written as each call ended); a
worker exiting on its own as the signal came lost the stop it was making.

Here a process whose SIGTERM does its default has it stop telemetry first (within
``OMETER_EXPORT_TIMEOUT``, on a thread of its own, so that a lock the interrupted code held
bounds the wait rather than hangs it), then die of the signal as before: its exit status, and
a parent's reading of it, are unchanged. A Python handler alone runs only when the main thread
next runs Python: a worker blocked on the pool's queue lock as the signal came (delivered to
another thread, or just before the wait began) never ran it, never died, and the pool's exit
waited for it for ever. So the signal's byte also goes to a pipe (``signal.set_wakeup_fd``)
that a thread of ours reads, whatever the main thread is doing; that thread stops telemetry
and ends the process (the main thread, interrupted anywhere, may hold a lock the stop needs,
and goes on meanwhile). A handler, an ignored SIGTERM or a wakeup fd of the program's own is
left alone: a program that handles the signal ends as it chooses (``sys.exit`` runs the
:mod:`atexit` flush), and one that set its handler after ours replaced it. Armed once, from
the main thread, as the process's first telemetry starts. Owns nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from ollama_meter._forks import ChildLock

_MARGIN = 0.5
"""Seconds waited past the stop's own bound for it to say what failed."""


class _State:
    armed: tuple[Callable[[], None], Callable[[], float]] | None = None
    """What a SIGTERM runs, and the seconds it is given at most."""
    pipe: tuple[int, int] | None = None
    """The wakeup pipe (read, write) this process's watcher reads."""
    heard = False
    """A SIGTERM came, and the watcher heard it."""
    ending = ChildLock()


_state = _State()


def stop_on_sigterm(stop: Callable[[], None], bound: Callable[[], float]) -> None:
    """Have a SIGTERM run ``stop`` (waited ``bound()`` seconds at most) and then end the
    process as the signal would have; only from the main thread of a process whose SIGTERM
    does its default (or is ours, inherited from the parent at a fork)."""
    if os.name != "posix" or _state.pipe is not None:
        return  # elsewhere a process is ended without a signal
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set a handler
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _stopped):
        return
    _state.armed = (stop, bound)
    signal.signal(signal.SIGTERM, _stopped)
    read, write = os.pipe()
    os.set_blocking(write, False)
    given = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    if given != -1:  # the program's own (asyncio's): the handler alone, as it has it
        signal.set_wakeup_fd(given)
        os.close(read)
        os.close(write)
        return
    _state.pipe = (read, write)
    threading.Thread(target=_watch, args=(read,), name="ometer-sigterm", daemon=True).start()


def _stopped(signum: int, frame: FrameType | None) -> None:
    """In the main thread, wherever it was: the code it interrupted may hold a lock the stop
    needs, so the watcher stops them while this thread goes on, until the process ends (the
    stop's bound at most: ``OMETER_EXPORT_TIMEOUT``). Made to wait here instead, it held one
    in 2 of 10 pools' exits, which lost their spans after the whole bound."""
    if _state.pipe is None or not _heard(_state.pipe[1]):
        _end()
    _state.heard = True  # the watcher ends the process: nothing else may


def unless_ending() -> None:
    """Wait here if a SIGTERM is ending the process: its stop is under way on another thread
    and ends the process within its bound, as the signal would have. At exit: the main
    thread, given back by the handler, may end the program meanwhile (a ``signal.pause()``
    returns), and it exited 0 with the stop cut (1 run in 2). Bounded all the same, should
    the watcher never end it."""
    if _state.armed is not None and (_state.heard or _state.ending.locked()):
        threading.Event().wait(_state.armed[1]() + 2 * _MARGIN)


def _heard(write: int) -> bool:
    """Whether the watcher hears signals still: the program may have set the wakeup fd since
    (asyncio's ``add_signal_handler``), and the watcher hears nothing then."""
    given = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(given, warn_on_full_buffer=given != write)
    return given == write


def _watch(read: int) -> None:
    while True:
        try:
            said = os.read(read, 64)
        except OSError:
            return
        if not said:
            return
        # Ours only while it is the handler: a program's own, set since, answers for itself.
        if signal.SIGTERM in said and signal.getsignal(signal.SIGTERM) is _stopped:
            _end()


def _end() -> None:
    """Stop telemetry within its bound, then die of SIGTERM; once, whichever of the main
    thread's handler and the watcher comes first (the other waits to be ended with it)."""
    if _state.armed is None or not _state.ending.acquire(blocking=False):
        threading.Event().wait()
    assert _state.armed is not None
    stop, bound = _state.armed
    worker = threading.Thread(target=stop, name="ometer-telemetry-sigterm", daemon=True)
    worker.start()
    worker.join(bound() + _MARGIN)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:  # Python sets a handler from the main thread only, which may be blocked for good
        with contextlib.suppress(Exception):
            setsig = ctypes.pythonapi.PyOS_setsig
            setsig.argtypes, setsig.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
            setsig(signal.SIGTERM, None)  # SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGKILL)  # not reached: the signal's default ends it


def _after_fork() -> None:
    """A forked child shares the parent's pipe: a SIGTERM to it woke the parent's watcher,
    which ended the parent. The child lets go of it (a multiprocessing child arms anew)."""
    _state.heard = False
    if _state.pipe is None:
        return
    (read, write), _state.pipe = _state.pipe, None
    with contextlib.suppress(ValueError):
        given = signal.set_wakeup_fd(-1)
        if given != write:
            signal.set_wakeup_fd(given)
    for fd in (read, write):
        with contextlib.suppress(OSError):
            os.close(fd)


os.register_at_fork(after_in_child=_after_fork)
