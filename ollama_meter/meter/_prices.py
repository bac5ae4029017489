"""The price book in force: a snapshot of the ledger's price rules, reloaded every ``ttl`` seconds."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO

from ollama_meter._reloaded import Reloaded
from ollama_meter.errors import BudgetError, PricingError
from ollama_meter.pricing import PriceBook

log = logging.getLogger("ollama_meter.meter")

if TYPE_CHECKING:
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger
    from ollama_meter.ledger._spans import Rules
    from ollama_meter.records import Cost, SpanRecord


class PriceSource:
    """Call it for the price book in force. See :class:`~ollama_meter._reloaded.Reloaded`."""

    def __init__(self, ledger: Ledger, *, settings: Settings, ttl: float = 30.0) -> None:
        self.ledger, self.settings = ledger, settings
        self._version: tuple[object, ...] | None = None
        self._file = PricingFile(ledger, settings)
        # A server's refresh task looks for a changed rule at each tick (every 5 s): waiting
        # out the 30 s, a gateway priced calls by a changed rule's old price for up to 35 s,
        # and a `reprice` run at once had passed those calls before they were written.
        self.cache = Reloaded(self.load, ttl=ttl, what="price rules", changed=self._changed)
        self._committing: tuple[tuple[object, ...], PriceBook] | None = None

    def at_commit(
        self, version: tuple[object, ...], rules: Callable[[], Rules]
    ) -> Callable[[SpanRecord], Cost]:
        """What a span costs under the rules a write of it reads (``version``; ``rules``
        reads them in that write), for the ledger to record it so (``Ledger.price``): a
        book read again only when the rules changed."""
        kept = self._committing
        if kept is None or kept[0] != version:
            readable, unreadable, zone = rules()
            book = PriceBook(
                readable,
                tz=zone_of(zone, self.settings),
                currency=self.settings.currency,
                unreadable=unreadable,
            )
            kept = self._committing = (version, book)
        book = kept[1]

        def cost_of(span: SpanRecord) -> Cost:
            cost = book.cost_of(span)  # unpriced: in the currency of the meter that ran it
            return replace(cost, currency=span.currency) if cost.unpriced else cost

        return cost_of

    def __call__(self) -> PriceBook:
        return self.cache.get()

    def load(self) -> PriceBook:
        """The book of the ledger's rules as they are now, read from it (no snapshot)."""
        ledger, settings = self.ledger, self.settings
        self._file.sync()
        self._version = ledger.price_rules_version()  # read first: a change after it is seen
        rules, unreadable = ledger.readable_price_rules()
        zone, currency = ledger_zone(ledger, settings), settings.currency
        return PriceBook(rules, tz=zone, currency=currency, unreadable=unreadable)

    def _changed(self) -> bool:
        return self._file.changed() or self.ledger.price_rules_version() != self._version


_Signature = tuple[int, int, int, int, int]
_RACY_NS = 2 * 10**9
"""A file changed this recently may change again within its clock's granularity, its size the
same: its look is not trusted, and it is read again at each reload until it is older."""


def _signature(info: os.stat_result) -> _Signature | None:
    """A file's identity, size and times; None when it is no regular file to read."""
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class PricingFile:
    """``OMETER_PRICING_FILE``, looked at again at each reload of a long-running process.

    Every command syncs it when it starts (``_wiring.ledger_for``); a gateway runs for weeks,
    and read it only then: an admin who raised a price in the file saw it charge the old one
    until a restart, with no word. Now an edit is synced at the next reload (a gateway's next
    tick, 5 s). An edit ometer refuses (broken TOML, a NaN or negative price, an unknown
    currency, the file removed) keeps the rules the file gave before, said once an edit in
    one ``WARNING``, never a traceback. Only a regular file is looked at again: a pipe given
    as the file was read to its end at the start."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger, self.settings = ledger, settings
        path = settings.pricing_file
        self._seen = self._look(path)  # as ledger_for synced it just before
        self.path = path if self._seen is not None else None
        self._said: object = None

    @staticmethod
    def _look(path: Path | None) -> _Signature | None:
        """The file's identity, size and times; None when it is no regular file to read."""
        try:
            return _signature(os.stat(path)) if path is not None else None
        except OSError:
            return None

    @staticmethod
    def _opened(path: Path) -> BinaryIO | None:
        """``path`` open to read, if it is a regular file (else None, closed)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        if _signature(os.fstat(fd)) is None:
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def changed(self) -> bool:
        """Whether the file may differ from what was last synced (a stat, no read)."""
        if self.path is None:
            return False
        look = self._look(self.path)
        racy = look is not None and time.time_ns() - look[4] < _RACY_NS
        return racy or look != self._seen

    def sync(self) -> None:
        """Sync the file if it changed. A fault of the file's is said, not raised; one of the
        ledger's (locked, away) is raised, and the file is looked at again next time."""
        if self.path is None or not self.changed():
            return
        from ollama_meter.meter._wiring import sync_pricing_file

        # Looked at and read through one descriptor, opened not waiting for a writer: a look
        # at the path, then an open of it, waited in open() for ever on a pipe swapped in
        # between, and the gateway's refresh (prices, budgets) with it, its stop too.
        opened = self._opened(self.path)
        look = None if opened is None else _signature(os.fstat(opened.fileno()))
        try:
            if opened is None or look is None:
                raise PricingError(
                    f"OMETER_PRICING_FILE {self.path}: is gone or no longer a regular file"
                )
            with opened:
                sync_pricing_file(
                    self.ledger, self.path, default_currency=self.settings.currency, opened=opened
                )
            self._said = None  # in force: the next fault is said again, whatever it is
        except (PricingError, BudgetError) as exc:
            if self._said != (look or "gone"):
                named = f"OMETER_PRICING_FILE {self.path}: "  # a ledger's refusal names no file
                text = str(exc) if str(exc).startswith(named) else named + str(exc)
                log.warning("%s; the rules it gave before stay in force", text)
                self._said = look or "gone"
        self._seen = look


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
    return zone_of(ledger.chosen_zone(), settings)


def zone_of(name: str | None, settings: Settings) -> ZoneInfo:
    """The zone a ledger's chosen zone ``name`` is here (see :func:`ledger_zone`)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name is None:
        return settings.tz
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return settings.tz
