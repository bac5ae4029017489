"""What the gateway sends its upstream beside the caller's request, and what it hears back.

The caller's own headers go on but for this hop's, its credentials and every ``X-Ometer-*``
(``_forwarded``). In their place the gateway says, as an ometer client does
(``upstream._recorded``), whom it charges the call to and the call's span (its caller's, if
an ometer client named one, else its own: ``origin_of``): so a metering
gateway behind it (``ometer run`` in front of ``ometer serve``, one gateway in front of
another) charges the call alike, and, on this gateway's own ledger, records it once. Its
answer then names its span in this ledger, which is the call's record: this gateway writes
none of its own (``meter._elsewhere``) and names that span to its caller. Before, two gateways
chained on one ledger wrote two spans of every call, the inner one charged to its default
department.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ollama_meter._names import origin_of
from ollama_meter.errors import UpstreamError
from ollama_meter.gateway._forwarded import forward_headers
from ollama_meter.gateway._threads import close_call, in_thread
from ollama_meter.meter import Attribution, Meter, MeteredCall
from ollama_meter.meter._elsewhere import gateways_span
from ollama_meter.records._trace import TRACEPARENT, TRACESTATE
from ollama_meter.upstream._delivered import delivered
from ollama_meter.upstream._pooled import header_of
from ollama_meter.upstream._recorded import LEDGER_HEADER, Heard, who_headers

if TYPE_CHECKING:
    from ollama_meter.gateway._fleet import Fleet

TRACE = (TRACEPARENT, TRACESTATE)
"""The caller's W3C trace context: not passed on as it came, but as the call's (:func:`onward`);
one that is not W3C's (kilobytes of it, say, which Ollama would refuse) goes no further."""


def onward(call: MeteredCall, charged: Attribution) -> Mapping[str, str]:
    """The headers that say whom ``call`` is charged to and its span; noted on the call, whose
    answer's words of its record :func:`heard` keeps."""
    span = call.span  # a client's span it names goes on: the gateway behind notes the call's
    sends = who_headers(
        charged.tenant,
        charged.department,
        charged.user,
        charged.tags,
        span_id=origin_of(span.id, span.tags),
        # Its own exported span; exporting none, its caller's, as W3C's forwarding mode has it
        trace=span.traced or span.parent,
    )
    call.heard = Heard(sends=sends)
    return sends


def upstream_headers(
    call: MeteredCall, charged: Attribution, caller: Mapping[str, str]
) -> dict[str, str]:
    """The headers of ``call``'s request to Ollama: the ``caller``'s that travel
    (``_forwarded``), then whom it is charged to and its span (:func:`onward`), for a gateway
    behind this one."""
    forwarded = {k: v for k, v in forward_headers(caller).items() if k.lower() not in TRACE}
    return {**forwarded, **onward(call, charged), "content-type": "application/json"}


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


_ASKED: weakref.WeakKeyDictionary[Meter, asyncio.Lock] = weakref.WeakKeyDictionary()
_FAILED: weakref.WeakKeyDictionary[Meter, float] = weakref.WeakKeyDictionary()
"""When (``time.monotonic``) each gateway's last ask of what is behind it failed."""
ASK_TIMEOUT = 3.0
"""Seconds an ask of what is behind the gateway waits for its answer."""
ASK_AGAIN = 5.0
"""Seconds after a failed ask before a call asks again: a gateway started before the server
behind it (``ometer run`` before ``ometer serve``) learns what it is once it answers, and a
server that is down is not asked on every call."""


async def ask_upstream(meter: Meter, fleet: Fleet, charged: Attribution) -> None:
    """Before the first call a hard budget covers, ask the servers behind the gateway whether
    one is a metering gateway on its ledger (which names it on ``/api/version``'s answer).
    Then the gateway holds each call's budget in rows of the call's own, which that gateway
    takes over (``meter._elsewhere.holds_alone``), and looks for that gateway's span of a call
    whose caller left before its answer (``recorded_behind``); with Ollama behind it, it holds
    calls in its shared leases. Asked until answered; unasked or unanswered, a call's answer says
    (``Meter.chained``). Not while no hard budget covers a call: Ollama is not asked what it
    need not be (but for a call its caller left unanswered: :func:`close_asked`)."""
    gate, ours = meter.budgets, meter.ledger.known_identity
    if meter.chained is not None or gate is None or ours is None:
        return
    who = (charged.tenant, charged.department)
    covering = gate.cached_budgets_for(*who)
    if covering is None:  # read again (as the call's admission would): off the event loop
        try:
            covering = await in_thread(gate.budgets_for, *who)
        except Exception:  # the ledger is away: the call's admission says so, with its span
            return
    if any(budget.hard for budget in covering):
        await _ask(meter, fleet)


async def _ask(meter: Meter, fleet: Fleet) -> None:
    """Ask the servers behind the gateway whether one is a metering gateway on its ledger, until
    one ask is answered (:attr:`Meter.chained`; unanswered, a call's answer says): one ask at
    a time, and after one that failed (the server behind still starting) none for
    :data:`ASK_AGAIN` seconds."""
    asking = _ASKED.get(meter)
    if asking is None:
        asking = _ASKED[meter] = asyncio.Lock()
    if asking.locked():  # being asked: its answer is waited for
        async with asking:
            return
    if meter.chained is not None or time.monotonic() < _FAILED.get(meter, -math.inf) + ASK_AGAIN:
        return
    async with asking:
        chained = False
        for server in fleet.servers:
            try:
                reply = await server.pool.request("GET", "/api/version", timeout=ASK_TIMEOUT)
            except UpstreamError:
                _FAILED[meter] = time.monotonic()
                return
            named = header_of(reply, LEDGER_HEADER.lower().encode())
            server.pool.finish(reply, completed=False)
            chained = chained or named == meter.ledger.known_identity
        if meter.chained is None:
            meter.chained = chained


ASK_WAIT = ASK_TIMEOUT + 1.0
"""Seconds a gateway whose caller left waits for the answer to what is behind it: past the
ask's own time, so the ask decides, answered or not. A second was too short on a busy host
(the server behind answering its ``/api/version`` late): the gateway wrote its own abort
beside the abort of the gateway behind it, one call counted twice. Nobody waits on it: the
caller is gone."""

_ASKING: set[asyncio.Task[None]] = set()


async def close_asked(
    meter: Meter, fleet: Fleet, call: MeteredCall, outcome: BaseException | None
) -> None:
    """Close ``call`` (``close_call``); one its upstream had whole and never answered (its
    caller gone, its time up) once the gateway knows what is behind it. A gateway behind it
    on its ledger records the call too (its caller gone) and its span is then the record
    (``meter._elsewhere.unanswered``); Ollama behind it, this one's is. Not known (no call
    answered yet, none held under a hard budget), a fresh ``ometer run`` in front of
    ``ometer serve`` wrote an abort of its own beside the inner one's: one call, two spans."""
    heard, unknown = call.heard, meter.chained is None and meter.ledger.known_identity is not None
    try:
        if unknown and outcome is not None and heard and not heard.answered and delivered():
            # Its own task: its request's notes (``_delivered``) are not the call's.
            asking = asyncio.ensure_future(_ask(meter, fleet))
            _ASKING.add(asking)
            asking.add_done_callback(_ASKING.discard)
            await asyncio.wait((asking,), timeout=ASK_WAIT)
    finally:
        await close_call(meter, call, outcome)
