"""A value read from the ledger and kept in memory, reloaded every so often.

Hot paths (every call's price book, the budgets that cover it) read the ledger
at most every ``ttl`` seconds. If a reload fails because the database is away,
the value loaded before stays in force and the reload is tried again later, so
an outage does not stop what does not need the database right now.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from ollama_meter.errors import LedgerError

T = TypeVar("T")
log = logging.getLogger("ollama_meter")


class Reloaded(Generic[T]):
    """``load()``'s result, reloaded at most every ``ttl`` seconds; thread-safe."""

    def __init__(self, load: Callable[[], T], *, ttl: float, what: str) -> None:
        self._load = load
        self._ttl = ttl
        self._what = what
        self._value: T | None = None
        self._loaded: float | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The value, reloaded first when due; a first load that fails raises LedgerError."""
        with self._lock:
            if self._due():
                try:
                    self._value = self._load()
                except LedgerError as exc:
                    if self._loaded is None:
                        raise
                    log.warning("keeping the %s loaded before: %s", self._what, exc)
                self._loaded = time.monotonic()
            return cast(T, self._value)

    def peek(self) -> T | None:
        """The value without touching the ledger; None when a reload is due."""
        with self._lock:
            return None if self._due() else self._value

    def expire(self) -> None:
        """Reload on the next :meth:`get` (after a change this process made itself)."""
        with self._lock:
            if self._loaded is not None:
                self._loaded = -math.inf

    def _due(self) -> bool:
        return self._loaded is None or time.monotonic() - self._loaded > self._ttl
