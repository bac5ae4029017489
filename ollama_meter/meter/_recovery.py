"""Calls a dead process left open: recorded as ``interrupted``, charged for their prompt only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ollama_meter.meter._elsewhere import behind_locked
from ollama_meter.meter._observers import SpanObserver, notify
from ollama_meter.pricing import PriceBook
from ollama_meter.records import (
    DurationSource,
    SpanRecord,
    Status,
    Stored,
    TokenSource,
    Usage,
    make_storable,
)

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger

log = logging.getLogger("ollama_meter.meter")

LATE_GRACE = 0.5
"""Seconds of the ledger taking writes that recovery found locked gives a gateway's span of a
dead client's call to be committed (the writer it waited behind gone, it is within 0.1 s)."""

INTERRUPTED_MESSAGE = (
    "the process that made this call ended before the call did (killed or crashed); "
    "what Ollama did with it is unknown, so only its prompt (estimated) is charged"
)

INTERRUPTED_BOUND_MESSAGE = (
    "the process that made this call ended before the call did (killed or crashed); "
    "what Ollama did with it is unknown, so it is charged the most it could cost, which its "
    "hard budget held for it"
)


def recover_interrupted(
    ledger: Ledger, prices: Callable[[], PriceBook], exporters: Sequence[SpanObserver] = ()
) -> int:
    """Record the calls dead processes left open in the journal, as ``interrupted``.

    Ollama received each of them; how they ended is unknown. The prompt's estimated
    tokens are charged, nothing more. Returns how many there were. ``prices`` is read
    only when there are some. A call whose whole span was noted (answered, its commit
    lost with the process) is recorded as it was, and not counted. ``exporters`` (the
    telemetry's observers) end an interrupted call's span as recorded: the process that made
    it never did, and it reached neither a collector nor the cost metrics. Not an answered
    one's: its process ended it, and may have sent it.
    """
    spans, interrupted = [], 0
    with ledger.journal.orphans() as orphans:
        # A client killed before any answer, its call recorded by a gateway on this ledger:
        # that span is the call's one record (its hold given back with the others).
        opened = [orphan.span for orphan in orphans if not orphan.final]
        elsewhere = _recorded_by_gateway(ledger, opened)
        for orphan in orphans:
            span = orphan.span
            if span.id in elsewhere:
                continue
            if not orphan.final:
                span.fail("interrupted", INTERRUPTED_MESSAGE, status=Status.INTERRUPTED)
                span.input_tokens = orphan.input_estimate
                span.token_source = TokenSource.ESTIMATED
                if orphan.bound is not None:
                    _charge_bound(span, orphan.bound)
                make_storable(span)
                span.apply_cost(prices().cost_of(span))
                notify(exporters, "on_end", span)  # its ids as exported go in the row
                interrupted += 1
            spans.append(span)
        if spans or elsewhere:
            stored = ledger.record(spans) if spans else {}
            ledger.free_leases(orphans, {**stored, **dict.fromkeys(elsewhere, Stored.COMMITTED)})
    if interrupted:
        log.warning(
            "recorded %d call(s) a dead process left unfinished as interrupted", interrupted
        )
    return interrupted


def _charge_bound(span: SpanRecord, bound: Usage) -> None:
    """``span``'s call as its hard budgets bounded it: the most it could have cost, which they
    held for it. Charged its prompt alone, a call whose process was killed once the caller
    had the reply cost nothing where replies or time are priced, and a caller that killed its
    own process mid-stream called again and again under a spent hard limit
    (test_killed_mid_reply.py)."""
    span.input_tokens, span.output_tokens = bound.input_tokens, bound.output_tokens
    if bound.busy_ns(charge_load=True):  # time is priced: the time the bound paid for
        span.prompt_eval_duration_ns, span.eval_duration_ns = bound.prompt_eval_ns, bound.eval_ns
        span.load_duration_ns = bound.load_ns
        span.duration_source = DurationSource.MEASURED  # an upper bound: no speed of Ollama's
    span.error_message = INTERRUPTED_BOUND_MESSAGE


def _recorded_by_gateway(ledger: Ledger, opened: list[SpanRecord]) -> set[str]:
    """Which ``opened`` calls a gateway on the ledger recorded (none, if it cannot be read:
    then they are recorded as interrupted, counted twice rather than not at all)."""
    if not opened:
        return set()
    from ollama_meter.ledger._client_spans import looked_for, recorded_by_gateway, writes_wait

    def look() -> set[str]:
        with ledger.read() as conn:
            return recorded_by_gateway(conn, opened)

    def done(found: set[str]) -> bool:
        return len(found) == len(opened)

    try:
        found = look()
        if not done(found) and writes_wait(ledger.engine):
            # A gateway's span of a call may be waiting behind the lock, as this process's
            # write of the interrupted copy would: its commit, once the lock goes, is looked for.
            found = looked_for(ledger.engine, look, LATE_GRACE, behind_locked(ledger), done)
        return found
    except Exception as exc:
        log.warning("could not look for gateway spans of calls dead clients left open: %s", exc)
        return set()
