"""A ledger's own id as a process holds it: read once, named anew with a new file at the path,
and in a copy (another file, another PostgreSQL database).

The id itself (random, in ``ledger_meta``) is ``_meta.ledger_identity``'s; this keeps the
process's copy of it true to the file the process writes to now.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import _meta
from ollama_meter.ledger._database import Database
from ollama_meter.ledger._engine import file_id


class Named(Database):
    """A database that knows its ledger's id (``X-Ometer-Ledger`` on a gateway's answers)."""

    _identity: str | None = None

    def identity(self, *, make: bool = True) -> str | None:
        """This ledger's id (``_meta.ledger_identity``), read once; ``make``: made if it has none."""
        if self._identity is not None:
            return self._identity

        def read(conn: Connection) -> tuple[str | None, str | None, str | None]:
            place = self._place(conn)
            found = _meta.ledger_identity(conn, make=False)
            return place, found, None if found is None else _meta.identity_place(conn)

        place, found, placed = self.reading(read)
        if found is not None and place is not None and placed != place:
            found = self._placed(place, trusted=found if placed is None else None)
        self._identity = found
        if self._identity is None and make:
            with self.write() as conn:
                found = _meta.ledger_identity(conn, make=True)
                self._identity = found if place is None else _meta.placed_identity(conn, place)
        return self._identity

    def _place(self, conn: Connection) -> str | None:
        """Where the ledger is, as a copy of it cannot be: the inode of its SQLite file, or its
        PostgreSQL database's (``_meta.database_place``). None: not a file, or not known."""
        if self._file is None:
            return None if self._sqlite else _meta.database_place(conn)
        found = file_id(self._file)
        return None if found is None else str(found[1])

    def _placed(self, place: str, *, trusted: str | None) -> str | None:
        """The id, the file's own (a copy named anew: ``_meta.placed_identity``); when it
        cannot be written (a read-only file), ``trusted``: the id of a ledger named before
        ids were placed, else none (the call recorded here too: twice, never not at all)."""
        try:
            with self.write() as conn:
                return _meta.placed_identity(conn, place)
        except LedgerError:
            return trusted

    @property
    def known_identity(self) -> str | None:
        """The id as last read (no I/O): None until read, and from a new file at the path on
        until read again (then named anew if this process named the old file)."""
        return self._identity

    def forget_identity(self) -> bool:
        """Another file is at the path: another ledger. Whether the old one was named."""
        named, self._identity = self._identity is not None, None
        return named

    def rename(self) -> None:
        """Name the new file now: a gateway names it on its next answer, not the gone file's
        (or once it reads it again, if it cannot now)."""
        with contextlib.suppress(LedgerError):
            self.identity()
