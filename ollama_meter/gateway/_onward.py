"""What the gateway sends its upstream beside the caller's request, and what it hears back.

The caller's own headers go on but for this hop's and those the gateway reads itself
(:data:`HOP_BY_HOP`). In their place the gateway says, as an ometer client does
(``upstream._recorded``), whom it charges the call to and its own span of it: so a metering
gateway behind it (``ometer run`` in front of ``ometer serve``, one gateway in front of
another) charges the call alike, and, on this gateway's own ledger, records it once. Its
answer then names its span in this ledger, which is the call's record: this gateway writes
none of its own (``meter._elsewhere``) and names that span to its caller. Before, two gateways
chained on one ledger wrote two spans of every call, the inner one charged to its default
department.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ollama_meter.meter import Attribution, Meter, MeteredCall
from ollama_meter.meter._elsewhere import gateways_span
from ollama_meter.upstream._recorded import Heard, who_headers

HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate", "origin",  # _origins.py
    # The caller's credentials are the gateway's to read, never Ollama's (nor its logs'):
    # every header a key or the admin token may come in.
    "authorization", "x-api-key", "x-ometer-key",
    # Whom the call is charged to, and its span: the gateway's own to say (:func:`onward`).
    "x-ometer-tenant", "x-ometer-department", "x-ometer-user", "x-ometer-tags",
    "x-ometer-client-span",
    # How this hop's bodies travel, the gateway's own to say: it has the whole request body
    # (a caller's "Expect: 100-continue" passed on had the client wait, with no timeout, for
    # a "100 Continue" a server may never send), and it decodes the answer and relays it
    # plain (a caller's "br" passed on got answers in a coding it cannot read).
    "expect", "accept-encoding",
})  # fmt: skip


def forward_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def onward(call: MeteredCall, charged: Attribution) -> Mapping[str, str]:
    """The headers that say whom ``call`` is charged to and its span; noted on the call, whose
    answer's words of its record :func:`heard` keeps."""
    sends = who_headers(
        charged.tenant, charged.department, charged.user, charged.tags, span_id=call.span.id
    )
    call.heard = Heard(sends=sends)
    return sends


def heard(meter: Meter, call: MeteredCall, headers: Mapping[str, str] | None) -> str | None:
    """Note what the upstream's answer (``headers``; None: none came) said of the call's
    record; the span a metering gateway on this ledger recorded it as, if one did."""
    if call.heard is None:
        return None
    if headers is None:
        call.heard.attempt()
        return None
    call.heard.heard(headers)
    if call.heard.ledger is None or meter.ledger.known_identity is None:
        return None  # (not read on the event loop: the gateway reads it when it starts)
    return gateways_span(meter, call)
