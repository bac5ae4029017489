"""``ometer serve`` starting before its PostgreSQL server answers (a boot, a restart of both).

A gateway that is running rides out a database outage (spans wait in the spool); one
that is starting could not open the ledger and exited at once, and under systemd's
restart limit (5 starts in 10 s) it could give up for good while the server was still
starting. It now waits for a server that cannot be reached yet, or that has no
connection to spare (other clients restarting with it free their slots as they end),
saying so once; a server that answers and refuses (a wrong password, no such
database) is no reason to wait, and ends the start at once as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._deadline import AT_CONNECTION_LIMIT, NOTHING_LISTENS, SERVER_CHANGING

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger

START_WAIT_S = 120.0
"""How long a starting gateway waits for a database server it cannot reach."""
_UNREACHABLE = (
    *NOTHING_LISTENS,
    *AT_CONNECTION_LIMIT,
    *SERVER_CHANGING,
    "timeout expired",
    "server closed the connection unexpectedly",
)


def unreachable(exc: LedgerError) -> bool:
    """Whether ``exc`` says the server could not be reached, or had no connection to spare
    (not that it refused)."""
    text = str(exc).lower()
    return any(sign in text for sign in _UNREACHABLE)


def open_when_up(
    cfg: Settings,
    opener: Callable[[Settings], Ledger],
    say: Callable[[str], object],
    *,
    within: float = START_WAIT_S,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Ledger:
    """The ledger ``opener`` opens, once a PostgreSQL server that cannot be reached yet
    answers (``within`` seconds at most, trying each second); SQLite is opened at once."""
    if not cfg.ledger_url.startswith("postgresql"):
        return opener(cfg)
    deadline = clock() + within
    waited = False
    while True:
        try:
            ledger = opener(cfg)
        except LedgerError as exc:
            if not unreachable(exc) or clock() >= deadline:
                raise
            if not waited:
                say(
                    f"waiting for the database server: {exc}; trying each second for up to "
                    f"{within:g} s (Ctrl-C stops)"
                )
                waited = True
            sleep(1.0)
            continue
        if waited:
            say("the database server answers: starting")
        return ledger
