"""What to say when a filter matched nothing: the names no span has, and the near ones."""

from __future__ import annotations

from difflib import get_close_matches
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger


def unmatched(ledger: Ledger, **given: str | None) -> str:
    """The filters in ``given`` (tenant, department, user, model) that name what no span in
    the ledger has, with the names closest to each; "" when every name is known (the filters
    together, or the window, matched nothing)."""
    said = []
    for column, value in given.items():
        if value is None:
            continue
        known = ledger.names(column)
        if value in known:
            continue
        close = get_close_matches(value, known, n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        shown = (
            repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value):,} characters)"
        )
        said.append(f"no span has {column} {shown}{hint}")
    return "; ".join(said)


def note_unmatched(ledger: Ledger, **given: str | None) -> None:
    """After an answer with no rows: on stderr, the filters that name what no span has."""
    from ollama_meter.cli._console import err

    hint = unmatched(ledger, **given) if any(v is not None for v in given.values()) else ""
    if hint:
        err.print(f"note: {hint}")
