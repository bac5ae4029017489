"""A ledger's own id as a process holds it: read once, named anew with a new file at the path.

The id itself (random, in ``ledger_meta``) is ``_meta.ledger_identity``'s; this keeps the
process's copy of it true to the file the process writes to now.
"""

from __future__ import annotations

import contextlib

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import _meta
from ollama_meter.ledger._database import Database


class Named(Database):
    """A database that knows its ledger's id (``X-Ometer-Ledger`` on a gateway's answers)."""

    _identity: str | None = None

    def identity(self, *, make: bool = True) -> str | None:
        """This ledger's id (``_meta.ledger_identity``), read once; ``make``: made if it has none."""
        if self._identity is None:
            with self.read() as conn:
                self._identity = _meta.ledger_identity(conn, make=False)
        if self._identity is None and make:
            with self.write() as conn:
                self._identity = _meta.ledger_identity(conn, make=True)
        return self._identity

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
