"""Which of this process's ledger connections are in use, from their pool's checkout to
their checkin: a connection back in its pool holds no transaction (and no lock)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def connections_watched(
    taken: Callable[[int], None], given_back: Callable[[int], None]
) -> Iterator[None]:
    """Within the block, ``taken(n)`` as a ledger connection ``n`` is checked out of any
    pool and ``given_back(n)`` as it is checked in, its transaction ended."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    def checked_out(_dbapi: Any, record: Any, _proxy: Any) -> None:
        taken(id(record))

    def checked_in(_dbapi: Any, record: Any) -> None:
        given_back(id(record))

    event.listen(Pool, "checkout", checked_out)
    event.listen(Pool, "checkin", checked_in)
    try:
        yield
    finally:
        event.remove(Pool, "checkin", checked_in)
        event.remove(Pool, "checkout", checked_out)
