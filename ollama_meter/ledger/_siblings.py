"""Spool folders of one PostgreSQL ledger reached at other addresses.

A server's spool folder is named after the URL's host, port and database (``_spool_dir``): a
hot standby's address (which refuses writes; ometer says to point the URL at the primary),
the new primary's after a failover, a pooler's port, ``localhost`` for ``127.0.0.1``. Spans
spooled under one were recorded only by a process opening the ledger at that same address
again: pointed elsewhere, as told, they stayed in a folder nothing read.

So a process opening a ledger marks its folder with where the ledger is
(:func:`~ollama_meter.ledger._meta.database_place`: the server's system identifier, which its
standbys keep, the database's and the schema's OIDs, which no copy has) and records the spool
files of every other folder marked with the same place. Read where they are, never moved: a
process that cannot write (at a standby's address) leaves them to the processes whose folder
it is. Journals stay with their folder: their processes are alive, or recovered there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._beside import make_folder
from ollama_meter.ledger._glance import OPENING, glancing
from ollama_meter.ledger._meta import database_place
from ollama_meter.ledger._spool import Spool, write_atomically
from ollama_meter.ledger._spool_dir import default_spool_dir

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger

log = logging.getLogger("ollama_meter.ledger")

MARK = "ledger-place"
"""The file in a server's spool folder naming where its ledger is."""


def record_siblings(ledger: Ledger) -> int:
    """Record the spans other addresses of ``ledger``'s database spooled (after marking its
    own folder); how many. A server's ledger with its default spool folder only; the server
    is asked where the ledger is only when its folder has no mark yet or another folder holds
    spans (else a look at the spool folders, 0.2 ms measured, is all an open pays)."""
    if ledger.engine.dialect.name != "postgresql":
        return 0
    folder = ledger.spool.directory
    if folder != default_spool_dir(ledger.url):  # a folder given: its caller's to record
        return 0
    others = list(_spooled_beside(folder))
    if not others and (folder / MARK).exists():
        return 0
    try:
        with ledger.engine.connect() as conn:
            place = database_place(conn)
    except DBAPIError:
        return 0
    if place is None:  # a role that may not read the server's identifier: as before
        return 0
    _mark(folder, place)
    done = 0
    for other in others:
        with contextlib.suppress(OSError):
            if (other / MARK).read_text() != place:
                continue
        try:
            with glancing(OPENING):  # as its own spool is recorded as it opens
                done += Spool(other).drain(ledger._record_now, ledger._isolate)
        except LedgerError as exc:  # this address takes no writes either: left where they are
            log.debug("spans spooled at another address stay in %s: %s", other, exc)
            break
    if done:
        log.info("recorded %d span(s) spooled at another address of %s", done, ledger.display_url)
    return done


def _mark(folder: Path, place: str) -> None:
    mark = folder / MARK
    with contextlib.suppress(OSError):
        if mark.read_text() == place:
            return
    with contextlib.suppress(OSError):  # no mark: its spans wait for this address, as before
        make_folder(folder)
        write_atomically(mark, place)


def _spooled_beside(folder: Path) -> Iterator[Path]:
    """The other spool folders beside ``folder`` that are marked and hold spans."""
    try:
        others = sorted(p for p in folder.parent.iterdir() if p != folder)
    except OSError:
        return
    for other in others:
        with contextlib.suppress(OSError):
            if (other / MARK).exists() and any(other.glob("*.jsonl")):
                yield other
