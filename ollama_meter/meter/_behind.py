"""Write-behind: the gateway answers a call once its whole span is in the journal, and
commits it right after, off the answer's path.

A span's commit (the row, its rollups, the transaction) took most of what the gateway
added to a call. The journal line that stands in for it is one append to a file this
process holds locked: were the process killed before the commit, whoever opens the
ledger next records the span from that line as it was (``DurableLedger.recover``).

One thread commits what is waiting, all of it in one transaction (group commit with
any span written the ordinary way meanwhile), then settles each call's budget: a hard
budget's hold on a call (its cost, once it has ended) lasts until its span is in, so no
budget is overshot meanwhile. When :data:`MOST_WAITING` spans are not committed yet (the
database is slow or away), or their calls hold :data:`MOST_BYTES` of text (and of the records
kept beside it to export), a call commits
its own span before answering, as without write-behind: memory stays bounded, and callers
feel the database's pace.

Commits begin :data:`GATHER_S` apart at least: a span answered sooner after the last one
began waits for the next, with the others answered meanwhile. A transaction's rollup rows
are much the same for one span as for ten (the same cells, models and bins): with one
transaction a call, the commit thread took two fifths of the gateway's CPU on sequential
calls (0.8 of 2 ms a call), competing with the next call for the cores and the GIL.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ollama_meter._forks import renew_after_fork
from ollama_meter._logging import Throttled
from ollama_meter.errors import LedgerError
from ollama_meter.meter._told import told_chars
from ollama_meter.records import SpanRecord, Stored

if TYPE_CHECKING:
    from ollama_meter.budgets import BudgetGate
    from ollama_meter.meter._call import MeteredCall
    from ollama_meter.meter._meter import Meter

log = logging.getLogger("ollama_meter.meter")

MOST_WAITING = 256
"""Spans not committed yet; past it, calls commit their own before answering. A saturated
gateway's commit thread falls that far behind at most (2,000 held 25 MB more at its peak),
and each transaction still carries a few hundred spans."""
MOST_BYTES = 64 * 2**20
"""Characters of prompts (and captured replies) the waiting calls may hold: 256 calls of a
megabyte each would hold 256 MB until the database took their spans."""


GATHER_S = 0.1
"""Seconds between the starts of two commits at least. A call ending after a quiet spell
commits at once; calls ending closer together are committed in one transaction (sequential
calls a few milliseconds apart: one commit for several). The spans are in the journal
meanwhile, and a hard budget holds each call's cost until its span is in: nothing is lost
or overspent for the wait; reports see the calls that much later. 100 ms, not 20: a
commit's rollup rows are much the same for 100 spans as for 20, and the gateway used 14 %
less CPU a call (``bench/gateway.py``, README "Gateway overhead")."""

SPOOL_RETRY_S = 5.0
"""Seconds the commit thread waits idle before it brings in what this process spooled (or
holds in memory: the spool's disk was full too)."""


class WriteBehind:
    """Spans answered and waiting for their commit, and the thread that commits them."""

    def __init__(
        self,
        meter: Meter,
        *,
        most: int = MOST_WAITING,
        most_bytes: int = MOST_BYTES,
        gather: float = GATHER_S,
    ) -> None:
        """Make ``meter`` write behind (with a journal only: it keeps the spans meanwhile)."""
        self._meter = meter
        self._most, self._most_bytes = most, most_bytes
        self._gather = gather
        self._gathering = False  # the thread waits for more spans to join the next commit
        self._hurried = 0  # callers of settle waiting: commit without gathering
        self._held = self._bytes = 0  # spans not committed yet (the batch being committed too)
        self._turn = threading.Condition()
        self._waiting: list[tuple[SpanRecord, MeteredCall]] = []
        self._busy = False
        self._stopping = False
        self._more = False
        """The last write or bring-in reached the database, and spans are still spooled: the
        next slice is brought in as soon as no call waits, not after an idle wait. One slice
        each wait (5 s) took an hour's outage (36,000 spans) eight minutes to come in."""
        self._start()
        renew_after_fork(self)
        if meter.journal:
            meter.behind = self

    def _after_fork(self) -> None:
        """A forked child commits its own spans before answering: the committing thread is
        the parent's, and so are the spans that waited for it."""
        self._turn = threading.Condition()
        self._waiting = []
        self._held = self._bytes = 0
        self._busy = self._gathering = False
        self._hurried = 0
        self._stopping = True
        self._running = False  # a span queued anyway (``here``) starts the child's own thread

    def _start(self) -> None:
        """Start the committing thread (the turn held, or not shared yet)."""
        self._running = True
        self._thread = threading.Thread(target=self._run, name="ometer-write-behind", daemon=True)
        self._thread.start()

    def room(self, call: MeteredCall) -> bool:
        """Whether ``call``'s span may wait for its commit: the journal noted the call (one
        that never reached Ollama was not), fewer than the most wait, and none waits in
        memory for the database."""
        ledger = self._meter.ledger
        return (
            self._fits()
            and not self._stopping
            and not ledger.held
            and ledger.journal.noted(call.span.id)
        )

    def _fits(self) -> bool:
        return self._held < self._most and self._bytes < self._most_bytes

    def _half_free(self) -> bool:
        """Whether the waiting spans take less than half the room: past it, no gathering,
        so that calls never commit their own for a commit that is only waiting."""
        return 2 * self._held < self._most and 2 * self._bytes < self._most_bytes

    def put(self, span: SpanRecord, call: MeteredCall, *, here: bool = False) -> bool:
        """Note ``span`` whole in the journal and queue it for its commit (:meth:`room` said
        there is room); False when the caller must commit it itself: the journal cannot be
        written, this has stopped, or other threads took the room since. ``here``: the
        caller cannot commit (an event loop), so the span waits even then (a journal that
        failed just now, a stop just begun)."""
        with self._turn:
            if not here and (self._stopping or not self._fits()):
                return False  # asked before others queued: the room is theirs now
            noted = self._meter.ledger.journal.finished(span)
            if not here and not noted:
                return False
            self._waiting.append((span, call))
            self._held += 1
            self._bytes += _text(span, call)
            call.behind = True
            if not self._running:  # the stop had ended it: a span queued ``here`` after it
                self._start()
            elif not self._busy and (not self._gathering or not self._half_free()):
                self._turn.notify()  # (a thread gathering commits once its time is up)
            return True

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every span queued so far is committed (or spooled); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._turn:
            self._hurried += 1
            self._turn.notify_all()  # a thread gathering commits now
            try:
                while self._waiting or self._busy:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._turn.wait(left)
            finally:
                self._hurried -= 1
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Commit what waits, then end the thread; later spans commit before answering (but
        for one an event loop queues anyway, which starts a thread again to commit it)."""
        if self._meter.behind is self:
            self._meter.behind = None
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._turn:
            self._stopping = True
            self._turn.notify_all()
            thread = self._thread
        while True:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
            with self._turn:
                if self._thread is thread:
                    return True
                thread = self._thread  # one started for a span queued as this one ended

    def _commit(self, calls: list[tuple[SpanRecord, MeteredCall]]) -> None:
        """Commit ``calls``' spans in one transaction (or spool them), then settle each
        call's budget, as the call would have before answering."""
        meter = self._meter
        try:
            stored = meter.writer.write_many([span for span, _ in calls])
        except LedgerError as exc:  # not even memory can keep them: the journal does
            log.error(
                "%d span(s) answered before their commit could not be written (%s); they stay "
                "in the call journal, and are recorded once this process ends",
                len(calls),
                exc,
            )
            stored = {}
        # The database took it: what is left in the spool comes in next, a slice at a time.
        self._more = Stored.COMMITTED in stored.values() and meter.ledger.kept_aside
        for span, call in calls:
            call.stored = stored.get(span.id)
        settled(meter, [call for _, call in calls])

    def _run(self) -> None:
        began = -float("inf")  # when the last commit began (monotonic)
        while True:
            with self._turn:
                idle = False
                quiet = time.monotonic() + (0.0 if self._more else SPOOL_RETRY_S)
                while not self._waiting and not self._stopping and not idle:
                    # Until the gathering time since the last commit is up, the thread wakes by
                    # itself: a call ending meanwhile does not wake it (a thread woken, and the
                    # GIL taken back, before the call's last write: once a commit, on the
                    # event loop's path).
                    now = time.monotonic()
                    window = began + self._gather - now
                    self._gathering = window > 0 and not self._hurried
                    if self._gathering:
                        self._turn.wait(window)
                        continue
                    # Quiet for a while, with spans spooled or held: bring them in now. By the
                    # clock: settle() wakes the thread, and one called often kept it from idling.
                    if (left := quiet - now) > 0:
                        self._turn.wait(left)
                        continue
                    idle = self._meter.ledger.kept_aside
                    quiet = time.monotonic() + SPOOL_RETRY_S
                self._gathering = True
                while self._waiting and not self._stopping and not self._hurried:
                    left = began + self._gather - time.monotonic()
                    if left <= 0 or not self._half_free():
                        break
                    self._turn.wait(left)
                self._gathering = False
                if idle and not self._waiting and not self._stopping:
                    batch = []
                elif not self._waiting:
                    self._running = False  # under the turn: a later put sees it and starts one
                    return
                else:
                    batch, self._waiting = self._waiting, []
                    self._busy = True
            if not batch:
                self._bring_in()
                continue
            began = time.monotonic()
            try:
                self._commit(batch)
            except Exception:  # the spans are in the journal still: recorded when we end
                log.exception(
                    "committing %d span(s) answered before their commit failed; they stay in "
                    "the call journal, and are recorded once this process ends",
                    len(batch),
                )
            finally:
                with self._turn:
                    self._busy = False
                    # (gathering at once: a call ending before the thread naps wakes it not)
                    self._gathering = time.monotonic() < began + self._gather
                    self._held -= len(batch)
                    self._bytes -= sum(_text(span, call) for span, call in batch)
                    self._turn.notify_all()

    def _bring_in(self) -> None:
        """Write what waits in memory or the spool while no call gives a write to do it."""
        self._more = False
        try:
            brought = self._meter.ledger.bring_in()
        except Exception as exc:  # the spans stay spooled; the next try or write brings them
            self._meter.failures.failed("bringing in spooled spans", exc)
            return
        # Progress, and more to do: again at once (a slice is short, and a call waiting goes
        # first); none (the database away, a file no slice can take): after the idle wait.
        self._more = bool(brought) and self._meter.ledger.kept_aside


def _text(span: SpanRecord, call: MeteredCall) -> int:
    """What a waiting call keeps alive, in characters (of text) or bytes (of the rest): its
    prompt, what content capture kept, and the records kept to export beside them: who said
    what (a message's record took more than its text, 6.3 MB for a body of 100,000 one-letter
    messages, uncounted), what its messages said beside their texts (the ids of the calls its
    tool messages answer, earlier calls), its reply's tool calls (their characters as the
    model wrote them) and the stop sequences asked for."""
    stops = span.asked.stop_sequences if span.asked is not None else None
    return (
        len(call.prompt_text)
        + len(span.prompt or "")
        + len(span.reply or "")
        + sum(_MESSAGE + len(role or "") + _LENGTH * len(lengths) for role, lengths in span.said)
        + sum(_STRING + len(stop) for stop in stops or ())
        + (_MESSAGE * len(span.told) + told_chars(span.told) if span.told else 0)
        + (_MESSAGE * len(span.called) + call.other_chars if span.called else 0)
    )


_MESSAGE = 64 + 49
"""Bytes a message's record holds besides its role's characters and its lengths: two tuples'
headers and its role's own string object (each message's, as decoded)."""
_LENGTH = 8 + 28
"""Bytes a length in a message's record holds at most: its slot and its integer object."""
_STRING = 8 + 49
"""Bytes a stop sequence holds besides its characters: its slot and its string object."""


def settled(meter: Meter, calls: list[MeteredCall]) -> None:
    """Settle each of ``calls`` (its span written, or not: ``call.stored``), then look for
    budgets changed elsewhere if the ledger took a span: the write-behind's commit and a
    call's own (no write-behind, or none with room) alike. A limit lowered by another
    process is in force from the next call, not 5 s of calls on: a gateway whose calls
    committed their own spans (its write-behind full) admitted every call meanwhile against
    its lease in memory. The look is the commit's own (``budgets_version`` read in its
    transaction): no read after it unless a budget changed, so a database gone right after
    the commit is not waited for on a call's path (a connect timeout). Only a server's (its
    budgets kept fresh: :meth:`Meter.keep_fresh`): the Python API's calls, which read the
    budgets again when due, each made one more read."""
    gate = meter.budgets
    if gate is None:
        return
    for call in calls:
        settle(gate, call, meter.failures)
    if gate.cache.kept_fresh and any(call.stored == Stored.COMMITTED for call in calls):
        # The commit read the version in its own transaction: no look (or wait) after it.
        gate.cache.refresh(changed=meter.ledger.budgets_seen != gate.version)


def settle(gate: BudgetGate, call: MeteredCall, failures: Throttled) -> None:
    """Release the call's reservation and fire alerts, once its span is written (or could
    not be); a failure here never fails the call."""
    span = call.span
    try:
        if call.reservation is not None:
            gate.settle(call.reservation, recorded=call.stored == Stored.COMMITTED)
    except Exception as exc:  # the database is away: a line per kind every 10 s, no more
        failures.failed("settling the budget of span %s (its hold expires)", exc, span.id)
    try:
        if span.cost_total > 0:
            gate.check_alerts(span.tenant, span.department, span.started_at, span.cost_total)
    except Exception as exc:
        failures.failed("checking budget alerts after span %s", exc, span.id)
