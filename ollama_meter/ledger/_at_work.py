"""Whether a rebuild of the rollups is at work: what it says in ``ledger_meta.rebuilding``
and how another process judges it, on this host or another."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from sqlalchemy import Connection

from ollama_meter.ledger._budgets import ledger_seconds
from ollama_meter.ledger._meta import get_meta, set_meta

REBUILD_SILENCE_S = 600
"""A rebuild on another machine that has not finished a day (or month) for this long has
died: one day of 10M spans took under a minute on a busy machine."""


BEAT_S = REBUILD_SILENCE_S / 10  # how often to say so while the days read need no write
STOPPED = "stopped"
"""What a rebuild that was stopped leaves in ``ledger_meta.rebuilding``: finish me."""


def beat(conn: Connection, clock: Callable[[], float] = time.time) -> None:
    """Say, in the rebuild's own transaction, that it is at work: when (by the ledger's clock,
    which every host judges it by), and which process."""
    said = f"{ledger_seconds(conn, clock)} {os.getpid()} {socket.gethostname()}"
    set_meta(conn, "rebuilding", said)


def at_work(conn: Connection, clock: Callable[[], float] = time.time) -> bool:
    """Whether a rebuild is at work: it said so within :data:`REBUILD_SILENCE_S`, and on
    this machine its process is alive too (so one killed is taken over at once; a number
    a new process took since, as after restoring a backup made mid-rebuild, only holds
    until the silence runs out). A host whose clock ran 20 minutes behind took another's
    rebuild of a moment ago for dead; one an hour ahead, killed, held the others an hour."""
    mark = (get_meta(conn, "rebuilding") or "").split(" ", 2)
    if len(mark) != 3 or not (mark[0].isdigit() and mark[1].isdigit()):
        return False
    said, pid, host = int(mark[0]), int(mark[1]), mark[2]
    if ledger_seconds(conn, clock) - said >= REBUILD_SILENCE_S:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True
