"""A value read from the ledger and kept in memory as a snapshot, reloaded every so often.

Hot paths (every call's price book, the budgets that cover it) read the ledger
at most every ``ttl`` seconds. If a reload fails (the database is away, a row
edited by hand in SQL cannot be read), the value loaded before stays in force,
said in at most one line every 10 s, and the reload is tried again later, so an
outage or a bad row does not stop what does not need them right now.

Two ways to keep it fresh. By default the first reader after ``ttl`` reloads it
(a CLI run, the Python API: the caller is on a thread anyway). A long-running
server calls :meth:`Reloaded.keep_fresh` and then :meth:`Reloaded.refresh`
from a background task: readers then never load, never wait on the lock, and
only read the snapshot (the first load, and one after :meth:`expire`, still
happen on demand; the value :meth:`Reloaded.keep_fresh` loaded stays in force if that
one fails).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ollama_meter._forks import ChildLock
from ollama_meter._logging import Throttled
from ollama_meter.errors import OmeterError

T = TypeVar("T")
log = logging.getLogger("ollama_meter")


class WouldBlock(Exception):
    """Only the ledger can answer this now; ask again from a thread (not an event loop)."""


class Reloaded(Generic[T]):
    """``load()``'s result, reloaded at most every ``ttl`` seconds; thread-safe."""

    def __init__(
        self,
        load: Callable[[], T],
        *,
        ttl: float,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        changed: Callable[[], bool] | None = None,
    ) -> None:
        self._load = load
        self._changed = changed
        self._clock = clock
        self._said = Throttled(log, clock=clock)
        self._ttl = ttl
        self._what = what
        self._value: T | None = None
        self._loaded: float | None = None
        self._expired = False
        self._background = False
        self._lock = ChildLock()

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
        """From now on :meth:`refresh` keeps the value fresh; readers only read snapshots.

        Nothing loaded yet, it is loaded now, and again by the first reader (a change made
        since is in force at once), which keeps this one if the ledger is away then: left to
        that reader alone, a server whose database went away before its first call had
        nothing in force, and every call was refused where one call earlier all were served.
        A load that fails here is left to that reader, which says why."""
        self._background = True
        with self._lock:
            if self._value is None:
                with contextlib.suppress(Exception):
                    self._reload()
                self._expired = True

    @property
    def kept_fresh(self) -> bool:
        """Whether :meth:`keep_fresh` was called: a server's, whose readers never load."""
        return self._background

    def refresh(self, changed: bool | None = None) -> None:
        """Reload now when a value is loaded and due (a background task's work); never raises.

        ``changed``: the caller knows whether the value changed (a commit of spans read the
        budgets' version in its own transaction): reload then, and only then, without a look
        of its own; a database gone right after that commit held the caller for a connect
        timeout, on a call's path."""
        if self._value is None or not self._stale(changed):
            return
        with self._lock:
            if self._stale(changed):
                try:
                    self._reload()
                except Exception as exc:  # a first load's failure: the next reader says so
                    self._said.failed("reloading the %s", exc, self._what)

    def _reload(self) -> T:
        """Load (lock held); when that fails, the value loaded before stays.

        Not only while the ledger is away: anything else (a bug of ours) raised to every
        caller, or was logged with a traceback at every reload of a server.
        """
        try:
            value = self._load()
        except Exception as exc:
            if self._value is None:
                raise
            more = self._said.more(f"{type(exc).__name__}")
            if more is not None:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning(
                    "keeping the %s loaded before: %s%s",
                    self._what,
                    reason,
                    more,
                    exc_info=None if isinstance(exc, OmeterError) else exc,
                )
            value = self._value
        self._value, self._loaded, self._expired = value, self._clock(), False
        return value

    def _stale(self, changed: bool | None) -> bool:
        return changed if changed is not None else self._due() or self._has_changed()

    def _has_changed(self) -> bool:
        """``changed()``: a cheap look, at each refresh, for a change not to wait ``ttl`` for."""
        if self._changed is None:
            return False
        try:
            return self._changed()
        except Exception:  # the ledger is away: the reload when due says so
            return False

    def _due(self) -> bool:
        return self._loaded is None or self._clock() - self._loaded > self._ttl
