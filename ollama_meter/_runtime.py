"""Process-wide state in one object, so it can be built and torn down as a whole.

What every call in a process shares lives in the process's :class:`Runtime`, made on
first use: the ledgers (one engine and one migration check per URL), the circuit
breakers (one per upstream host), the telemetry providers (one per exporter
configuration) and the gateway's ledger threads. :func:`reset_runtime` closes all of
it, each part with its own closer, and the next use builds it afresh: tests between
cases, an application that embeds ometer on shutdown, a fork that must not share
connections with its parent.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ollama_meter._forks import ChildLock

T = TypeVar("T")

log = logging.getLogger("ollama_meter")


class Runtime:
    """Shared parts by kind and key, each with the function that closes it."""

    def __init__(self) -> None:
        self._lock = ChildLock()
        self._parts: dict[tuple[str, Hashable], tuple[Any, Callable[[Any], None] | None]] = {}

    def shared(
        self,
        kind: str,
        key: Hashable,
        build: Callable[[], T],
        close: Callable[[T], None] | None = None,
    ) -> T:
        """The ``kind`` part for ``key``: built by ``build`` the first time, the same one after."""
        with self._lock:
            found = self._parts.get((kind, key))
            if found is None:
                found = self._parts[(kind, key)] = (build(), close)
            value: T = found[0]
            return value

    def parts(self, kind: str) -> list[Any]:
        """The ``kind`` parts, left shared."""
        with self._lock:
            return [value for (part, _), (value, _) in self._parts.items() if part == kind]

    def drop(self, kind: str, key: Hashable | None = None) -> list[Any]:
        """Forget the ``kind`` parts (only ``key``'s when given) and return them, unclosed."""
        with self._lock:
            keys = [k for k in self._parts if k[0] == kind and (key is None or k[1] == key)]
            return [self._parts.pop(k)[0] for k in keys]

    def close(self, kind: str | None = None) -> None:
        """Close every part (only the ``kind`` parts when given), newest first; a closer that
        fails is logged, the rest still run."""
        with self._lock:
            parts = [item for item in self._parts.items() if kind in (None, item[0][0])]
            for found, _ in parts:
                del self._parts[found]
        for (part, key), (value, close) in reversed(parts):
            if close is None:
                continue
            try:
                close(value)
            except Exception as exc:  # one broken part must not keep the others open
                log.warning("closing %s %r failed: %s", part, key, exc)


_current = Runtime()
_swap = ChildLock()


def runtime() -> Runtime:
    """The process's runtime."""
    return _current


def reset_runtime() -> None:
    """Close everything the process shares; the next use builds a new runtime."""
    global _current
    with _swap:
        old, _current = _current, Runtime()
    old.close()


# -- the cyclic collector in a process of its own (``ollama_meter.__main__``) -------------

STARTING = 250_000
"""New objects before the collector's first run: ``ometer log`` and ``report`` make about
140,000 in all, so they never wait on it; longer work is still collected, in larger rounds."""
SERVING = 10_000
"""New objects between the collector's runs once a gateway serves: short pauses, seldom."""


def serving() -> None:
    """For a process that has started and stays up: what start-up made is kept for good
    (frozen: never walked again) and later objects are collected in short, regular rounds.

    Only in a process ``ometer`` started (``ollama_meter.__main__``): a program that runs
    the command line itself (tests, an embedder) keeps its collector as it set it."""
    if gc.get_threshold()[0] == STARTING:
        gc.freeze()
        gc.set_threshold(SERVING)
