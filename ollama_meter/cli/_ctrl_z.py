"""Ctrl-Z put off until the ledger's connections are back in their pool.

A bulk command stopped by Ctrl-Z (SIGTSTP) in the middle of a piece kept its transaction
open, and on SQLite its write lock: every gateway on the ledger waited its few seconds on
each call and then spooled the span, until someone typed ``fg``. While this holds, a
Ctrl-Z that comes with a connection in use is kept until the last one is checked in (its
transaction committed or rolled back), and the command stops then, holding nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import ClassVar


class _Held:
    """The connections in use, and whether a Ctrl-Z waits for them."""

    lock = threading.RLock()  # a handler may run while its own thread holds it
    in_use: ClassVar[set[int]] = set()
    asked = False


def _checked_out(connection: int) -> None:
    with _Held.lock:
        _Held.in_use.add(connection)


def _checked_in(connection: int) -> None:
    with _Held.lock:
        _Held.in_use.discard(connection)
    _stop_if_idle()


def _asked_to_stop(_signum: int, _frame: object) -> None:
    _Held.asked = True
    _stop_if_idle()


def _stop_if_idle() -> None:
    with _Held.lock:
        if not _Held.asked or _Held.in_use:
            return
        _Held.asked = False
    if threading.current_thread() is threading.main_thread():
        # As Ctrl-Z stops it (a shell says "Stopped"), then ready for the next one
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, _asked_to_stop)
    else:  # only the main thread may change what a signal does
        os.kill(os.getpid(), signal.SIGSTOP)


@contextlib.contextmanager
def stops_between_pieces() -> Iterator[None]:
    """Within the block, a Ctrl-Z stops the process only with no ledger connection in use.
    Nothing changes where Ctrl-Z was not going to stop it (a handler set, or ignored) or
    off the main thread."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTSTP) != signal.SIG_DFL
    ):
        yield
        return
    from ollama_meter.ledger._in_use import connections_watched

    signal.signal(signal.SIGTSTP, _asked_to_stop)
    try:
        with connections_watched(_checked_out, _checked_in):
            yield
    finally:
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        with _Held.lock:
            asked, _Held.asked = _Held.asked, False
            _Held.in_use.clear()
        if asked:  # asked while the last piece ran: stop now, as Ctrl-Z would have
            os.kill(os.getpid(), signal.SIGTSTP)
