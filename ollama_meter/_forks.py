"""What a forked child must not share with its parent: connections, files, locks, threads.

A process that forks (gunicorn ``--preload``, multiprocessing's fork start method,
celery's prefork pool) gives its child a copy of every object, and with it the
parent's sockets to Ollama and to the database, its journal file, its locks as some
thread of the parent held them, and no threads at all. Used in both processes, a
kept-alive connection carries both processes' requests and answers each the other's;
a commit the parent's thread was running is waited for in the child for ever.

An object that holds such things passes itself to :func:`renew_after_fork`; in the
child, before any of the child's code runs, its ``_after_fork()`` drops what was the
parent's (without closing it for the parent) and starts afresh. Some state cannot be
dropped (SQLite keeps what a process's connections to a file hold in process-wide
structures): an object with ``_before_fork()`` has the fork wait, bounded, until no thread
is inside it, and ``_after_fork_in_parent()`` lets the parent's threads go on.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

log = logging.getLogger("ollama_meter")


class Renewable(Protocol):
    def _after_fork(self) -> None: ...


_renewable: weakref.WeakValueDictionary[int, Renewable] = weakref.WeakValueDictionary()


def renew_after_fork(part: Renewable) -> None:
    """Have ``part._after_fork()`` run in each child forked while ``part`` is alive."""
    _renewable[id(part)] = part


class ChildLock:
    """A ``threading.Lock`` a forked child has unheld.

    A child gets each lock as it was at the fork, held by whichever thread of the parent
    held it then; no thread of the child will ever release it. So a fork taken while a
    thread reloaded the prices (the lock held while the ledger is read) left the child's
    first call waiting for ever (a multiprocessing pool's workers hung, at random). State
    a lock guards is written whole under it, so the child's copy is one state or the other.
    """

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_locks: weakref.WeakSet[ChildLock] = weakref.WeakSet()


def _each(step: str) -> None:
    for part in list(_renewable.values()):
        method = getattr(part, step, None)
        if method is None:
            continue
        try:
            method()
        except Exception as exc:  # the others must still be renewed
            log.warning("%s of %s at a fork failed: %s", step, type(part).__name__, exc)


def _in_child() -> None:
    for lock in list(_locks):  # first: a part's _after_fork may take its locks
        lock._after_fork()
    _each("_after_fork")


os.register_at_fork(
    before=lambda: _each("_before_fork"),
    after_in_parent=lambda: _each("_after_fork_in_parent"),
    after_in_child=_in_child,
)
