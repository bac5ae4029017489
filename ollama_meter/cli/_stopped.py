"""Upkeep stopped half way (Ctrl-C; SIGTERM from systemd, ``docker stop``, cron's
``timeout``): one line of what is done and what to run for the rest, then the same exit.

Bulk commands work in pieces, each its own transaction, so what they leave is whole:
the line says how far they got. Without it SIGTERM ended them with exit 143 and not a
word, and Ctrl-C said only "interrupted".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ollama_meter.cli._console import err
from ollama_meter.cli._ctrl_z import stops_between_pieces


@contextlib.contextmanager
def said_if_stopped(what: Callable[[], str]) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block, print ``what()`` and go on stopping; a Ctrl-Z
    stops it between pieces (:func:`stops_between_pieces`)."""
    try:
        with stops_between_pieces():
            yield
    except (KeyboardInterrupt, SystemExit):  # SIGTERM is a SystemExit (ometer's handler)
        err.print(what())
        raise


class Tally:
    """Work committed piece by piece: its count, shown on a progress bar as it grows."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.done = 0
        self._bar, self._task = bar, task

    def add(self, count: int) -> None:
        """``count`` more done (a piece committed)."""
        self.done += count
        self._bar.update(self._task, completed=self.done)

    def plan(self, total: int) -> None:
        """How many there are to do, once known."""
        self._bar.update(self._task, total=total)


@contextlib.contextmanager
def tallied(
    what: str, stopped: Callable[[int], str], *, total: int | None = None
) -> Iterator[Tally]:
    """A progress bar of ``what`` and its :class:`Tally`; on Ctrl-C or SIGTERM inside the
    block, ``stopped(done)`` is said (:func:`said_if_stopped`)."""
    from ollama_meter.cli._common import progress_bar

    with progress_bar(what) as bar:
        tally = Tally(bar, bar.add_task(what, total=total))
        with said_if_stopped(lambda: stopped(tally.done)):
            yield tally
