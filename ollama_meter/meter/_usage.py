"""Token counts when Ollama does not give them, and the usage a span is priced on."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ollama_meter._reloaded import WouldBlock
from ollama_meter.pricing import usage_of

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger
    from ollama_meter.records import PastCall

__all__ = ["RecentCalls", "estimate_tokens", "tokens_in_chars", "usage_of"]

HISTORY_TTL = 30.0
"""Seconds a model's recent calls are reused for bounding time-priced costs."""

_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough count for text Ollama did not count: about four characters a token."""
    return tokens_in_chars(len(text))


def tokens_in_chars(chars: int) -> int:
    """:func:`estimate_tokens` of a text ``chars`` characters long."""
    return -(-chars // _CHARS_PER_TOKEN) if chars > 0 else 0


class RecentCalls:
    """Each model's recent calls, for bounding time-priced costs: read at most every
    :data:`HISTORY_TTL` seconds."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._read: dict[str, tuple[float, list[PastCall]]] = {}

    def of(self, model: str, *, blocking: bool = True) -> list[PastCall]:
        """``model``'s recent calls; :class:`WouldBlock` when they must be read first and
        ``blocking`` is False (an event loop)."""
        now = time.monotonic()
        cached = self._read.get(model)
        if cached is None or now - cached[0] > HISTORY_TTL:
            if not blocking:
                raise WouldBlock(f"the recent calls to {model!r} must be read first")
            if len(self._read) > 1000:
                self._read.clear()
            cached = self._read[model] = (now, self._ledger.recent_usage(model))
        return cached[1]
