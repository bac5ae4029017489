"""Waiting for the spans a gateway answered before their commit (write-behind, ``_behind``).

The gateway notes a call's whole span in its journal before answering, and notes it again
once the span is committed: a test that reads the ledger right after an answer waits for
that second line, as a user reading a moment later would find the span there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from ollama_meter.ledger import Ledger


def unsettled(journals: Path) -> list[str]:
    """Ids of the spans the journals in ``journals`` note whole and not yet as committed."""
    whole, closed = set(), set()
    for path in journals.glob("*.journal"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated or removed meanwhile
            continue
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # the last line, being appended
                continue
            if "f" in entry:
                whole.add(entry["f"]["id"])
            elif "c" in entry:
                closed.add(entry["c"])
    return sorted(whole - closed)


def committed(ledger: Ledger, timeout: float = 60) -> Ledger:
    """``ledger``, once every span the gateways writing to it answered so far is committed."""
    deadline = time.monotonic() + timeout
    while unsettled(ledger.journal.directory):
        assert time.monotonic() < deadline, f"answered spans not committed in {timeout} s"
        time.sleep(0.005)
    return ledger


class _AfterCommits:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(committed(self._ledger), name)


def after_commits(ledger: Ledger) -> Ledger:
    """``ledger``, each use of which waits first as :func:`committed` does."""
    return cast(Ledger, _AfterCommits(ledger))
