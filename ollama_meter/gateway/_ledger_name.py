"""The gateway's word to an ometer client in front of it: which ledger recorded the call.

Every metered answer names the call's span (``X-Ometer-Span-Id``) and the ledger it is in
(``X-Ometer-Ledger``, ``Ledger.identity``). An ometer client on the same ledger then leaves
the call's record to this span instead of writing its own: one call, one span. The gateway
itself never takes a caller's word that a call is metered already: it records every call.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders

from ollama_meter.ledger import Ledger
from ollama_meter.upstream._recorded import LEDGER_HEADER, SPAN_HEADER

log = logging.getLogger("ollama_meter.gateway")


class LedgerName:
    """The id of the gateway's ledger, once read (given one, if it has none yet): the file at
    the path now's (removed, or a backup restored, the new file is named anew), never one the
    gateway read when it started."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @property
    def value(self) -> str | None:
        return self._ledger.known_identity

    def learn(self) -> None:
        """Read the id, unless known (in a thread: it asks the ledger). While the ledger is
        away answers name none, and an ometer client on it records its own span as well:
        the call counted twice until then, never not at all."""
        if self.value is not None:
            return
        try:
            self._ledger.identity()
        except Exception as exc:  # the ledger's own failure is said where it is used
            log.debug("the ledger's id could not be read yet: %s", exc)

    def stamp(self, headers: MutableHeaders, span_id: str) -> None:
        """Name the call's span, and the ledger it is in, on its answer."""
        headers[SPAN_HEADER] = span_id
        if self.value is not None:
            headers[LEDGER_HEADER] = self.value
