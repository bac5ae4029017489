"""The price book in force: a snapshot of the ledger's price rules, reloaded every ``ttl`` seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._reloaded import Reloaded
from ollama_meter.pricing import PriceBook

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger


class PriceSource:
    """Call it for the price book in force. See :class:`~ollama_meter._reloaded.Reloaded`."""

    def __init__(self, ledger: Ledger, *, settings: Settings, ttl: float = 30.0) -> None:
        self.ledger, self.settings = ledger, settings
        self._version: tuple[object, ...] | None = None
        # A server's refresh task looks for a changed rule at each tick (every 5 s): waiting
        # out the 30 s, a gateway priced calls by a changed rule's old price for up to 35 s,
        # and a `reprice` run at once had passed those calls before they were written.
        self.cache = Reloaded(self.load, ttl=ttl, what="price rules", changed=self._changed)

    def __call__(self) -> PriceBook:
        return self.cache.get()

    def load(self) -> PriceBook:
        """The book of the ledger's rules as they are now, read from it (no snapshot)."""
        ledger, settings = self.ledger, self.settings
        self._version = ledger.price_rules_version()  # read first: a change after it is seen
        rules, unreadable = ledger.readable_price_rules()
        zone, currency = ledger_zone(ledger, settings), settings.currency
        return PriceBook(rules, tz=zone, currency=currency, unreadable=unreadable)

    def _changed(self) -> bool:
        return self.ledger.price_rules_version() != self._version


def ledger_zone(ledger: Ledger, settings: Settings) -> ZoneInfo:
    """Where a budget's days, weeks and months, and a price rule's effective dates, begin:
    at the ledger's midnights, the same for every process on it.

    Cut at each gateway's own ``OMETER_TIMEZONE``, a Berlin and a Los Angeles gateway held
    their budget leases (and fired their alerts) under different period starts, blind to
    each other's calls in flight, and together admitted twice a hard limit; and priced a
    call near a rule's first day by different rules. ``OMETER_TIMEZONE`` for a ledger from
    before zones were kept (as before), and when this machine does not know the ledger's
    zone (nothing is recorded then anyway: spans wait in the spool).
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = ledger.chosen_zone()
    if name is None:
        return settings.tz
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return settings.tz
