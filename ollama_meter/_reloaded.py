"""A value read from the ledger and kept in memory as a snapshot, reloaded every so often.

Hot paths (every call's price book, the budgets that cover it) read the ledger
at most every ``ttl`` seconds. If a reload fails because the database is away,
the value loaded before stays in force and the reload is tried again later, so
an outage does not stop what does not need the database right now.

Two ways to keep it fresh. By default the first reader after ``ttl`` reloads it
(a CLI run, the Python API: the caller is on a thread anyway). A long-running
server calls :meth:`Reloaded.keep_fresh` and then :meth:`Reloaded.refresh`
from a background task: readers then never load, never wait on the lock, and
only read the snapshot (the first load, and one after :meth:`expire`, still
happen on demand, since nothing is known yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ollama_meter.errors import LedgerError

T = TypeVar("T")
log = logging.getLogger("ollama_meter")


class WouldBlock(Exception):
    """Only the ledger can answer this now; ask again from a thread (not an event loop)."""


class Reloaded(Generic[T]):
    """``load()``'s result, reloaded at most every ``ttl`` seconds; thread-safe."""

    def __init__(self, load: Callable[[], T], *, ttl: float, what: str) -> None:
        self._load = load
        self._ttl = ttl
        self._what = what
        self._value: T | None = None
        self._loaded: float | None = None
        self._expired = False
        self._background = False
        self._lock = threading.Lock()

    def get(self) -> T:
        """The value, loaded first when needed; a first load that fails raises LedgerError."""
        value = self.peek()
        if value is not None:
            return value
        with self._lock:  # one loader at a time; the others take its value
            value = self.peek()
            if value is None:
                value = self._reload()
            return value

    def peek(self) -> T | None:
        """The snapshot, never touching the ledger; None when only a load can answer."""
        value = self._value
        if value is None or self._expired or (not self._background and self._due()):
            return None
        return value

    def snapshot(self) -> T:
        """:meth:`peek`, or :class:`WouldBlock` when only a load can answer."""
        value = self.peek()
        if value is None:
            raise WouldBlock(f"the {self._what} must be read from the ledger first")
        return value

    def expire(self) -> None:
        """Reload on the next :meth:`get` (after a change this process made itself)."""
        self._expired = True

    def keep_fresh(self) -> None:
        """From now on :meth:`refresh` keeps the value fresh; readers only read snapshots."""
        self._background = True

    def refresh(self) -> None:
        """Reload now when a value is loaded and due (a background task's work); never raises."""
        if self._value is None or not self._due():
            return
        with self._lock:
            if self._due():
                try:
                    self._reload()
                except Exception:  # a first load's failure: the next reader says so
                    log.exception("reloading the %s failed", self._what)

    def _reload(self) -> T:
        """Load (lock held); while the ledger is away, the value loaded before stays."""
        try:
            value = self._load()
        except LedgerError as exc:
            if self._value is None:
                raise
            log.warning("keeping the %s loaded before: %s", self._what, exc)
            value = self._value
        self._value, self._loaded, self._expired = value, time.monotonic(), False
        return value

    def _due(self) -> bool:
        return self._loaded is None or time.monotonic() - self._loaded > self._ttl
