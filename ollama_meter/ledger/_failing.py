"""Whether a ledger's writes fail now, since when and why: what ``/healthz`` says of it.

A read of one row (the probe) passed on a file damaged where it does not look, while every
write failed and each call's span went to the spool. Only the writes themselves tell; this
keeps what the last of them said, at no cost to a write that succeeds."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError, TimeoutError as PoolTimeout

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._database import is_lock_error
from ollama_meter.ledger._engine import READ_ONLY
from ollama_meter.ledger._sqlstates import NO_SCHEMA, NOT_ALLOWED, SCHEMA_CHANGED


class Failing:
    """The writes of one ledger handle: failing since when and why, or not."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._why = ""

    def failed(self, exc: LedgerError) -> None:
        """A write failed with ``exc``: the writes fail from now on (or still), unless it is
        a failure that passes by itself (:func:`passing`)."""
        if passing(exc):
            return
        if self._since is None:
            self._since = time.time()
        self._why = str(exc)

    def passed(self) -> None:
        """A write succeeded."""
        self._since = None

    def said(self, spool: Path) -> str | None:
        """Why the writes fail, since when, and where their spans wait; None while they pass."""
        if self._since is None:
            return None
        since = datetime.fromtimestamp(self._since, UTC)
        return (
            f"writes fail since {since:%Y-%m-%d %H:%M:%S} UTC, their spans kept in {spool} "
            f"until one succeeds: {self._why}"
        )


def passing(exc: LedgerError) -> bool:
    """Whether ``exc`` passes by itself: another writer held the lock past the wait (a long
    ``ometer db rollup``), or every connection of this process was busy: no fault of the
    ledger, and no reason for a load balancer to take the gateway out."""
    cause = exc.__cause__
    if isinstance(cause, PoolTimeout):
        return True
    return isinstance(cause, DBAPIError) and is_lock_error(cause)


UNTIL_CHANGED = frozenset({READ_ONLY, NOT_ALLOWED, NO_SCHEMA, "28P01", "28000", "3D000"})
"""PostgreSQL's SQLSTATEs for a refusal nothing ends but a person: a read-only database (a
standby), a privilege revoked, a wrong password or user, no such database or schema."""


def spooled_level(exc: LedgerError) -> int:
    """The level spans spooled for ``exc`` are said at: ERROR (a log alert's level) when the
    writes stay failing until someone changes something, WARNING for a server restarting
    and other failures that pass by themselves."""
    state = getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None)
    lasting = state in UNTIL_CHANGED or state in SCHEMA_CHANGED
    return logging.ERROR if lasting else logging.WARNING
