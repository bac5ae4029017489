"""The pool of a ledger's connections: a connection given back to it once it was disposed
of is closed, not kept.

The ledger disposes of its pool when SQLite finds the file damaged (until a write succeeds
again, after each use) and when the file was removed or replaced: a connection kept open
holds the old file's locks and cache. ``Engine.dispose`` closes the connections waiting in
the pool, not those in use; each of those went back, when its use ended, into the pool just
disposed of, which nothing takes from again, and stayed open there until the garbage
collector found it (rarely: a served ometer looks every 10,000 new objects). One open in WAL
mode holds a shared lock on the file. A backup copied over the damaged ledger (``cp``, the
same file, with a rollback journal) was then switched to WAL by each new connection, which
waited ``wait`` seconds for that lock, of this very process, holding every other reader of
it back meanwhile: each write was spooled and a gateway's ``/healthz`` did not answer within
10 s (CI). Owns nothing else: which connections are disposed of, and when, is
``_database``'s.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry, QueuePool


class ClosingPool(QueuePool):
    """A :class:`~sqlalchemy.pool.QueuePool` that closes what is given back once disposed of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._disposed = False
        self._disposing = threading.Lock()  # a connection is put back whole, or closed

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        with self._disposing:
            if not self._disposed:  # put back before dispose() empties the pool
                super()._do_return_conn(record)
                return
        record.close()

    def dispose(self) -> None:
        with self._disposing:
            self._disposed = True
        super().dispose()
