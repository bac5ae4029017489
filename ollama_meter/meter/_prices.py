"""The price book in force: a snapshot of the ledger's price rules, reloaded every ``ttl`` seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._reloaded import Reloaded
from ollama_meter.pricing import PriceBook

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger


class PriceSource:
    """Call it for the price book in force. See :class:`~ollama_meter._reloaded.Reloaded`."""

    def __init__(self, ledger: Ledger, *, settings: Settings, ttl: float = 30.0) -> None:
        self.cache = Reloaded(
            lambda: PriceBook(ledger.price_rules(), tz=settings.tz, currency=settings.currency),
            ttl=ttl,
            what="price rules",
        )

    def __call__(self) -> PriceBook:
        return self.cache.get()
