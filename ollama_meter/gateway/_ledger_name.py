"""The gateway's word to an ometer client in front of it: which ledger recorded the call.

Every metered answer names the call's span (``X-Ometer-Span-Id``) and the ledger it is in
(``X-Ometer-Ledger``, ``Ledger.identity``). An ometer client on the same ledger then leaves
the call's record to this span instead of writing its own: one call, one span. The gateway
itself never takes a caller's word that a call is metered already: it records every call.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.upstream._recorded import LEDGER_HEADER, SPAN_HEADER

log = logging.getLogger("ollama_meter.gateway")

UNNAMED = (
    "the gateway cannot name its ledger (%s): an ometer client (ometer chat, the Python API) "
    "writing to the same ledger through this gateway records each call again beside the "
    "gateway's span, so those calls are counted twice. The name is made once, in the "
    "ledger_meta table: run `ometer db upgrade` once as the database's owner, or give the "
    "gateway's database role INSERT on ledger_meta (or make the ledger file writable); the "
    "gateway tries again every few seconds"
)
"""Said once, not at every try: the ledger away at start, or a role that cannot write."""


def _first_line(exc: BaseException, place: str) -> str:
    """What failed: a LedgerError says where; a driver's error its first line (SQLAlchemy's
    goes on with the SQL and its parameters)."""
    if isinstance(exc, LedgerError):
        return str(exc)
    said = str(getattr(exc, "orig", None) or exc).strip()
    return f"the ledger at {place} failed: {said.splitlines()[0] if said else type(exc).__name__}"


class LedgerName:
    """The id of the gateway's ledger, once read (given one, if it has none yet): the file at
    the path now's (removed, or a backup restored, the new file is named anew), never one the
    gateway read when it started."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._warned = False

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
        except Exception as exc:  # said once: it is tried again every few seconds
            if not self._warned:
                self._warned = True
                log.warning(UNNAMED, _first_line(exc, self._ledger.display_url))
        else:
            if self._warned:
                self._warned = False
                log.info("the gateway names its ledger now: calls are counted once again")

    def stamp(self, headers: MutableHeaders, span_id: str | None = None) -> None:
        """Name the call's span (or the one a refusal names already), and the ledger it is in,
        on its answer."""
        named = span_id or headers.get(SPAN_HEADER)
        if named is not None:
            headers.update(self.naming(named))

    def naming(self, span_id: str) -> dict[str, str]:
        """The headers that name a call's span and its ledger; on a refusal too (a ``rejected``
        or ``error`` span): an ometer client on this ledger then records no second span."""
        named = {SPAN_HEADER: span_id}
        if self.value is not None:
            named[LEDGER_HEADER] = self.value
        return named

    def told(self, request: Request, answer: Response) -> Response:
        """``answer``, passed through, naming the ledger if it is ``/api/version``'s: a gateway
        in front of this one asks it (``_onward.ask_upstream``), to learn that this one
        records its calls there."""
        if request.url.path == "/api/version" and self.value is not None:
            answer.headers[LEDGER_HEADER] = self.value
        return answer
