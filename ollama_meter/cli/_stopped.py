"""Upkeep stopped half way (Ctrl-C; SIGTERM from systemd, ``docker stop``, cron's
``timeout``): one line of what is done and what to run for the rest, then the same exit.

Bulk commands work in pieces, each its own transaction, so what they leave is whole:
the line says how far they got. Without it SIGTERM ended them with exit 143 and not a
word, and Ctrl-C said only "interrupted".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ollama_meter.cli._console import err


@contextlib.contextmanager
def said_if_stopped(what: Callable[[], str]) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block, print ``what()`` and go on stopping."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):  # SIGTERM is a SystemExit (ometer's handler)
        err.print(what())
        raise
