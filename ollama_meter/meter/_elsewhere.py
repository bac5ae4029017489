"""A call a metering gateway recorded in this meter's own ledger: the gateway's span is its record.

An ometer client (``ometer chat``, the Python API) that reaches Ollama through ``ometer serve``
or ``ometer run``'s gateway writing to the same ledger wrote a second span of the one call,
charged to the client's department as well as to the gateway's: reports, budgets and
chargeback counted it twice. The gateway names its ledger on its answer
(``upstream._recorded``); when that is this meter's ledger the client writes no span of
its own. Its budget reservation is given back (the gateway took its rows over as the hold of
the call, :func:`clients_hold`, or held the call itself), its journal entry closed, and its span, measured and priced as any, takes the id of the
gateway's span, so the caller finds the call's record by it. Telemetry ends the call's trace
span with no cost, tokens or metrics (the gateway exports those); user hooks see the call
end as any other (what they add to it is not stored: the gateway's span is the record).

A call that got no answer once its upstream had the whole request (the client's timeout, a
gateway's caller gone) is recorded by a gateway behind it as well, its caller gone: the meter
looks in its ledger for that span (:func:`recorded_behind`), found by the id the call goes by
along the chain (``origin_of``), and leaves the call to it as to an answer that named it.

The gateway never leaves a span out on a caller's word: only a client leaves its own out,
and an answer naming another ledger (or none: a plain Ollama) changes nothing. An answer
can only name this ledger by its id (random, unguessable; not a secret), and even then can
only spare this client its copy of a call.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, TypedDict

from ollama_meter._names import CLIENT_SPAN_TAG, origin_of
from ollama_meter.meter._call import MeteredCall
from ollama_meter.meter._ending import closed, mark_ended
from ollama_meter.meter._observers import notify
from ollama_meter.records import Source, SpanRecord, make_storable

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger
    from ollama_meter.meter._meter import Meter

RECORDED_ELSEWHERE = "on_recorded_elsewhere"
"""What an observer that has it is told instead of ``on_end`` of a call another recorded."""


def gateways_span(meter: Meter, call: MeteredCall) -> str | None:
    """The span of ``call`` a gateway on ``meter``'s ledger recorded, as its answer named it."""
    heard = call.heard
    if heard is None or heard.ledger is None or heard.span_id is None:
        return None
    try:
        ours = meter.ledger.identity(make=False)
    except Exception:  # the ledger is away: the call is recorded here (spooled) as well
        return None
    return heard.span_id if ours and hmac.compare_digest(heard.ledger, ours) else None


def leaves_to_gateway(meter: Meter, call: MeteredCall) -> bool:
    """Whether a gateway's answer named ``call``'s span in this ledger (read, not asked), or
    the ledger is to be asked for one (:func:`unanswered`)."""
    heard = call.heard
    ours = meter.ledger.known_identity
    named = heard is not None and heard.ledger is not None and heard.ledger == ours
    return named or unanswered(meter, call)


BEHIND_WAIT = 1.0
"""Seconds a meter looks for a gateway's span of a call it gave up waiting for, while the
ledger takes writes: the gateway records it (its caller gone) as soon as it notices, within
milliseconds. A client's caller waits on the look."""

BEHIND_WAIT_UNWATCHED = 5.0
"""Seconds a gateway looks, its caller gone (nobody waits on the look): on a busy host the
gateway behind took 0.8 s and more to record the call, and a second's look missed it (the
call counted twice)."""

BEHIND_LOCKED = 5.0
"""Seconds more it looks at least while writes to the ledger wait for a lock another holds: a
gateway's span waits as long (``OMETER_LEDGER_WAIT``'s default) before it goes to its spool."""


def behind_locked(ledger: Ledger) -> float:
    """Seconds more a look for a gateway's span goes on while writes wait for a lock: as long
    as this process's own writes to ``ledger`` wait (``OMETER_LEDGER_WAIT``, a site's gateways
    set alike), :data:`BEHIND_LOCKED` at least. A fixed 5 s missed the span of a gateway that
    waited 10 s for the lock, and the call was counted twice."""
    return max(BEHIND_LOCKED, ledger.wait)


def unanswered(meter: Meter, call: MeteredCall) -> bool:
    """Whether ``call`` ended with no answer once its upstream had its whole request (a
    timeout, its caller gone), where that upstream may be (a client) or is (a gateway) a
    metering gateway on this ledger: that gateway records the call too, its caller gone,
    noting the call's id."""
    heard = call.heard
    # A gateway asks only where it knows (``gateway._onward``): the innermost one, Ollama behind
    # it, would write its span a wait late, past the wait of the meter in front looking for it.
    behind = meter.chained or (meter.chained is None and meter.source is not Source.GATEWAY)
    return heard is not None and heard.delivered and not heard.answered and behind


def recorded_behind(meter: Meter, call: MeteredCall) -> str | None:
    """The span a gateway on this ledger recorded :func:`unanswered` ``call`` as, looked for
    over :data:`BEHIND_WAIT` (a gateway: :data:`BEHIND_WAIT_UNWATCHED`) of the ledger taking writes (:data:`BEHIND_LOCKED` more at most
    while they wait for a lock: the gateway's may be waiting) (None: none; the call is
    recorded here, never not at all)."""
    from ollama_meter.ledger._client_spans import gateway_span_of, looked_for

    def look() -> str | None:
        with meter.ledger.read() as conn:
            return gateway_span_of(conn, call.span)

    free = BEHIND_WAIT_UNWATCHED if meter.source is Source.GATEWAY else BEHIND_WAIT
    try:  # seconds of the ledger taking writes, not of the clock (a lock held 1.5 s hid it)
        return looked_for(meter.ledger.engine, look, free, behind_locked(meter.ledger))
    except Exception as exc:  # the ledger is away: recorded here (spooled) as well
        meter.failures.failed("looking for a gateway's span of span %s", exc, call.span.id)
        return None


def clients_hold(meter: Meter, span: SpanRecord) -> str | None:
    """The client span whose budget hold a gateway takes over for ``span``, its own call's.

    An ometer client on this ledger held the call's bound before sending it (it cannot know
    a gateway on its ledger will answer) and names its own span of the call
    (``X-Ometer-Client-Span``): the gateway admits the call on that hold, not beside it (held
    twice, a call with room for it was refused). Only while the gateway names its ledger on
    its answers: a client not told so records the call again, and then keeps its own hold."""
    if meter.source is not Source.GATEWAY or meter.ledger.known_identity is None:
        return None
    return span.tags.get(CLIENT_SPAN_TAG)


def heard_upstream(meter: Meter, call: MeteredCall) -> None:
    """Note what ``call``'s upstream answered as, if it answered: ``Meter.chained`` says whether
    it is a metering gateway on the meter's ledger (True), anything else (False), or not
    known yet (None)."""
    heard, ours = call.heard, meter.ledger.known_identity
    if heard is None or not heard.answered:
        return
    if heard.ledger is None:  # no gateway recorded it: Ollama, or a proxy that names none
        meter.chained = False
    elif ours is not None:
        meter.chained = hmac.compare_digest(heard.ledger, ours)


def holds_alone(meter: Meter) -> bool:
    """Whether a gateway holds a call's budget in rows of the call's own, which a gateway behind
    it on its ledger takes over (``clients_hold``), not in its shared lease, which that gateway
    cannot: held twice, a call near the limit was refused with room for it. So it does until
    its upstream has answered as anything but such a gateway (Ollama itself)."""
    return meter.source is Source.GATEWAY and meter.chained is not False


class Holding(TypedDict):
    """How a call's budget is held (``BudgetGate.admit``'s words)."""

    adopt: str | None
    alone: str | None


def holding(meter: Meter, span: SpanRecord) -> Holding:
    """Whose hold ``span``'s call takes over (:func:`clients_hold`), and whether it is held in
    rows of its own (:func:`holds_alone`)."""
    alone = origin_of(span.id, span.tags) if holds_alone(meter) else None
    return Holding(adopt=clients_hold(meter, span), alone=alone)


def _give_back(meter: Meter, call: MeteredCall) -> None:
    """Give back the call's budget hold, once: the gateway's span is charged to the budgets."""
    reservation, call.reservation = call.reservation, None
    if reservation is not None and meter.budgets is not None:
        try:
            meter.budgets.ended(reservation, 0)
            meter.budgets.settle(reservation)
        except Exception as exc:  # the lease lapses: never fails the call
            meter.failures.failed("giving back the budget hold of span %s", exc, call.span.id)


def streamed_from_gateway(meter: Meter, call: MeteredCall) -> None:
    """A stream's first part came: if a gateway on this ledger sent it, its span is the call's
    record from here on, however this process ends (its caller gone, the gateway records the
    call as an abort), so the call's journal entry is closed now. Kept open, a client killed
    mid-stream was recorded again, as interrupted, by the next process on the ledger. Its
    budget hold is given back now too: the journal no longer says to free it."""
    if gateways_span(meter, call) is not None:
        if meter.journal:
            meter.ledger.journal.closed([call.span.id])
        _give_back(meter, call)  # not left to lapse (15 minutes) if this process dies


def leave_to_gateway(meter: Meter, call: MeteredCall, error: BaseException | None) -> bool:
    """End ``call`` with no span of its own if a gateway on this ledger recorded it (True)."""
    heard_upstream(meter, call)
    if call.heard is None:
        return False
    recorded = gateways_span(meter, call)
    if recorded is None and unanswered(meter, call):
        recorded = recorded_behind(meter, call)
    if recorded is None:
        return False
    closed(call)
    call.measure(time.perf_counter_ns(), ok=error is None or getattr(error, "consumed", False))
    span = call.span
    mark_ended(span, error)
    make_storable(span)
    span.apply_cost(call.prices.cost_of(span))  # what the caller is told it cost
    if meter.journal:
        meter.ledger.journal.closed([span.id])
    span.id, call.heard.relied_on = recorded, True
    _give_back(meter, call)
    watching = [o for o in meter.observers if hasattr(o, RECORDED_ELSEWHERE)]
    stopped = notify(watching, RECORDED_ELSEWHERE, span)
    if stopped is not None:
        raise stopped
    return True
