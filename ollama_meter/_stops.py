"""Stop signals from a command's first instant: SIGTERM, SIGHUP and SIGQUIT.

A command stops on each of them as Ctrl-C stops it: it unwinds, so a call in flight is
still written as a span, and exits 128 + the signal (a gateway stopped by SIGTERM or SIGHUP
while it starts exits 0, as one stopped while serving does: ``cli/__init__.py``). Left at
their default, SIGQUIT (Ctrl-\\) dumped core, in ``ometer chat`` and in a gateway still
starting, its call left to the next process as ``interrupted``; and any of them killed the
process outright while its modules loaded (a quarter of a second of each start), before the
command's handler was there.

So ``ometer`` (``__main__``) :func:`hold`\\s them first of all: a signal that comes while the
modules load is noted, and the command's handler, once :func:`take_over` installs it, acts
on it at once. What comes before even that (the interpreter's own start, some 20 ms) is the
system's default: no Python code runs yet to catch it. A signal ignored when the process
started (``nohup``: SIGHUP) stays ignored.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
Handler = Callable[[int, FrameType | None], object]

_held: list[int] = []


def _note(signum: int, _frame: FrameType | None) -> None:
    _held.append(signum)


def _taken() -> list[signal.Signals]:
    """The stop signals to handle: SIGTERM always (as before), the others unless ignored."""
    return [s for s in STOPS if s == signal.SIGTERM or signal.getsignal(s) != signal.SIG_IGN]


def hold() -> None:
    """Note the stop signals that come until :func:`take_over` (main thread only)."""
    for sig in _taken():
        signal.signal(sig, _note)


def take_over(handler: Handler) -> None:
    """Handle the stop signals with ``handler``, first the one noted while held, if any."""
    for sig in _taken():
        signal.signal(sig, handler)
    if _held:
        handler(_held.pop(0), None)
