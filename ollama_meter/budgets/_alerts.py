"""Budget alerts: the message, the channels it goes to, and delivery that never blocks a call.

The log gets the alert as it fires. A webhook and email (``_channels``) get it when
configured, on a background thread with retries and backoff; what happened is written back
to the alert's row. A failed attempt is made again by the same process after :data:`RETRY_AFTER` (a
gateway runs for weeks), and undelivered alerts by the next run."""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ollama_meter._forks import renew_after_fork
from ollama_meter._jitter import jittered
from ollama_meter._logging import Throttled
from ollama_meter._runtime import runtime
from ollama_meter.budgets._channels import (
    Channel,
    Deferred,
    Remembering,
    Unanswered,
    Undeliverable,
)
from ollama_meter.records import Alert

if TYPE_CHECKING:
    from ollama_meter.budgets._store import AlertLog

log = logging.getLogger("ollama_meter.alerts")

MAX_RUNS = 5
"""Attempts at an undelivered alert (each run that starts makes one) before giving up on it."""
TRIES = 3
"""Tries of a channel in one attempt, with backoff: about a second and a half in all."""
RETRY_AFTER = (60.0, 300.0, 1800.0, 7200.0)
"""Seconds after the 1st, 2nd... failed attempt at which the process that made it (if it
still runs) makes the next: a webhook down for minutes, or two hours, still gets the alert."""

MAX_HELD = 1_000
"""Alerts a process holds to deliver (queued, or waiting for a retry). Past it they wait in
the ledger, where each is a row, and are read back as held ones are done: a channel that
hangs holds an attempt some ten seconds, and every alert fired meanwhile (an hour of
crossings, a budget per tenant) was held in memory."""
EXIT_WAIT = 1.0
"""Seconds a process that is ending waits for alerts still being delivered."""
CLAIM_SECONDS = 120.0
"""Seconds a process holds an alert it is delivering: no other sends it meanwhile. Longer
than a delivery takes (three tries per channel, each bounded by :data:`~ollama_meter.budgets._channels.CHANNEL_TIMEOUT`,
and a webhook's answer by ``ANSWER_TIMEOUT``: one unanswered is not tried again at once);
a process that dies mid-delivery holds it that long, then the next run tries it again."""


UNDELIVERABLE = "undeliverable: "
"""How a channel's refusal for good is on record: that channel is not tried again."""


def deliver(
    alert: Alert,
    channels: Sequence[Channel],
    *,
    done: Mapping[str, str] | None = None,
    attempts: int = TRIES,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    took: Callable[[dict[str, str]], None] | None = None,
    failing: set[str] | None = None,
) -> tuple[dict[str, str], bool]:
    """Send to every channel still owed the alert, retrying with jittered backoff; never raises.

    ``took`` is told the outcome so far each time a channel takes the alert, before the next
    is tried. ``failing``: the channels whose failure is said already (a process's, kept
    across alerts): a channel failing for an hour is one line, not a line an alert and try.
    Returns what happened per channel and whether all of them have it now.
    """
    outcome = dict(done or {})
    if not outcome.get("log", "").startswith("sent"):
        said(alert)
    outcome["log"] = "sent"
    failing = set() if failing is None else failing
    for channel in channels:
        if not _owed(outcome.get(channel.name, "")):
            continue
        for attempt in range(1, attempts + 1):
            try:
                outcome[channel.name] = channel.send(alert)
            except Undeliverable as exc:  # another try meets it again: said, not made
                outcome[channel.name] = f"{UNDELIVERABLE}{exc}"[:500]
                break
            except Exception as exc:  # a channel's failure must never reach the call
                # Cut: a hostile server's text. Not a record of who has the alert already.
                cut = None if isinstance(exc, Deferred) else 500
                outcome[channel.name] = f"failed: {exc}"[:cut]
                if isinstance(exc, Unanswered):  # it may have it: not posted again at once
                    break
                if attempt < attempts:
                    sleep(jittered(backoff * 2 ** (attempt - 1)))
            else:
                if took is not None:
                    took(dict(outcome))
                break
        if outcome[channel.name].startswith("sent"):
            if channel.name in failing:
                failing.discard(channel.name)
                log.info("alerts reach %s again", channel.name)
        elif channel.name not in failing:
            failing.add(channel.name)
            check = getattr(channel, "check", f"the {channel.name} channel's server")
            log.warning(_failed(channel.name, outcome[channel.name], check))
    delivered = all(value.startswith("sent") for value in outcome.values())
    return outcome, delivered


def _owed(outcome: str) -> bool:
    """Whether a channel with ``outcome`` on record is still to be tried."""
    return not outcome.startswith(("sent", UNDELIVERABLE))


def given_up(alert: Alert) -> bool:
    """Whether no run tries ``alert`` again: its runs are spent, or every channel on record
    that does not have it refused it for good."""
    left = [what for what in alert.deliveries.values() if not what.startswith("sent")]
    return alert.attempts >= MAX_RUNS or (bool(left) and not any(map(_owed, left)))


def _failed(channel: str, outcome: str, check: str) -> str:
    """The line that says a channel fails, once while it does: why, what comes next, and
    what to look at (a refusal for good says what to change itself)."""
    if outcome.startswith(UNDELIVERABLE):
        why, then = outcome.removeprefix(UNDELIVERABLE), "not tried again"
    else:
        why = outcome.removeprefix("failed: ")
        then = f"each is tried again, {MAX_RUNS} attempts in all: check {check}"
    return (
        f"alerts not delivered by {channel}: {why}; {then}. Later alerts there are not "
        "logged again until it takes one (`ometer budget status` lists them)"
    )


def said(alert: Alert) -> Alert:
    log.warning("budget alert: %s", alert.text())  # the channel it always goes to
    return replace(alert, deliveries={**alert.deliveries, "log": "sent"})


def _give_up(alert: Alert, outcome: dict[str, str]) -> None:
    failed = {name: what for name, what in outcome.items() if not what.startswith("sent")}
    log.warning(
        "giving up on budget alert %d after %d runs, not delivered by %s: %s "
        "(`ometer budget status` lists it)",
        alert.id,
        MAX_RUNS,
        ", ".join(failed),
        alert.text(),
    )


class AlertDispatcher:
    """Delivers alerts on one background thread and records the outcome in the ledger."""

    def __init__(
        self,
        ledger: AlertLog,
        channels: Sequence[Channel],
        *,
        backoff: float = 0.5,
        claim_seconds: float = CLAIM_SECONDS,
        retry_after: Sequence[float] = RETRY_AFTER,
        max_held: int = MAX_HELD,
    ) -> None:
        self.ledger = ledger
        self.max_held = max_held
        self.channels = list(channels)
        self.backoff = backoff
        self.claim_seconds = claim_seconds
        self.retry_after = tuple(retry_after)
        self._queue: queue.Queue[Alert] = queue.Queue()
        self._later: list[tuple[float, int, Alert]] = []  # (due, order, alert): a heap
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._recording = threading.Lock()
        self._closed = self._part = False
        self._failures = Throttled(log)
        self._failing: set[str] = set()
        """Channels whose failure is said (:func:`deliver`): said again once one recovers."""
        self._held: set[int] = set()
        """The ids of the alerts queued or waiting for a retry: at most :attr:`max_held`."""
        self._sending: int | None = None  # the alert the thread is delivering (held still)
        self._left_from: int | None = None
        """The first id of an alert left in the ledger for want of room, while any is."""
        renew_after_fork(self)

    @property
    def held(self) -> int:
        """How many alerts this process holds to deliver (queued, or waiting for a retry)."""
        return len(self._held)

    def _after_fork(self) -> None:
        """A forked child delivers its own alerts, on a thread of its own (the parent's is not
        there); what the parent had queued is the parent's to send."""
        self._queue = queue.Queue()
        self._later = []
        self._held, self._left_from, self._sending = set(), None, None
        self._thread = None
        self._lock, self._recording = threading.Lock(), threading.Lock()

    def dispatch(self, alert: Alert, *, say: bool = True) -> None:
        """Log ``alert`` now (on the delivery thread, a hung webhook kept every later alert out
        of the log too), and queue it for the channels that do not have it yet.

        ``say`` False: an alert read back from the ledger, which any process starting may
        read; only the one that wins its attempt says it (:func:`deliver`), if unsaid."""
        if say and not alert.deliveries.get("log", "").startswith("sent"):
            alert = said(alert)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ometer-alerts", daemon=True)
                self._thread.start()
                # A short-lived process (the CLI) waits a moment, never long: the next run
                # retries the rest (atexit: a host that never resets the runtime).
                atexit.register(self.flush, EXIT_WAIT)
            if not self._part:
                # A runtime part, so it is done with the ledger before the ledger closes
                # (parts close newest first); once closed, the next alert opens it again.
                runtime().shared("alerts", id(self), lambda: self, AlertDispatcher.close)
                with self._recording:
                    self._closed, self._part = False, True
            if alert.id in self._held:
                return  # queued, or waiting for its retry, already
            if len(self._held) >= self.max_held:  # it waits in the ledger: read back later
                self._left_from = min(alert.id, self._left_from or alert.id)
                return
            self._held.add(alert.id)
        self._queue.put(alert)

    def close(self) -> None:
        """Wait a moment (:data:`EXIT_WAIT`) for alerts going out, then record nothing more:
        the ledger is about to close. What was not delivered is retried by the next run."""
        self.flush(EXIT_WAIT)
        with self._recording:
            self._closed, self._part = True, False
        with self._lock:
            self._later.clear()  # the ledger closes: the next run tries them
            # Not the alert a send is still under way for (the exit wait ran out): a channel
            # told to forget it meanwhile forgot who had it before a try left in that send,
            # and mailed them again; and, the dispatcher opened again (the next alert) before
            # that send ended, the alert was kept for a retry, held no more: no close let go
            # of it. The thread lets go of it as the send ends, else a later close does.
            sending = self._held & {self._sending}
            self._let_go(self._held - sending)
            self._held = sending
            self._left_from = None

    def flush(self, timeout: float = 15.0) -> bool:
        """Wait (bounded) until every queued alert has been tried; True if all were (once
        closed, not at all: the exit hook waited again for a channel that hung)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if self._closed or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        while True:
            try:
                alert = self._queue.get(timeout=self._until_due())
            except queue.Empty:
                self._queue_due()
                continue
            kept = False
            with self._lock:
                # (a close let go of it while queued, if the dispatcher opened again since)
                self._held.add(alert.id)
                self._sending = alert.id
            try:
                kept = self._deliver(alert)
            except Exception as exc:  # the database is away: a line per kind every 10 s
                self._failures.failed("delivering or recording alert %d", exc, alert.id)
            finally:
                with self._lock:
                    self._sending = None
                    if not kept:
                        self._held.discard(alert.id)
                if not kept:
                    self._let_go([alert.id])
                # Before this one is done: flush() sees a retry due now, and those read back.
                self._queue_due()
                self._read_back()
                self._queue.task_done()

    def _let_go(self, alert_ids: Iterable[int]) -> None:
        """This process is done with ``alert_ids``: what a channel kept of them goes too."""
        for channel in self.channels:
            if isinstance(channel, Remembering):
                for alert_id in alert_ids:
                    channel.forget(alert_id)

    def _read_back(self) -> None:
        """Queue alerts left in the ledger for want of room, oldest first, as room frees."""
        with self._lock:
            start, room = self._left_from, self.max_held - len(self._held)
        if start is None or room <= 0:
            return
        try:
            page = self.ledger.alerts(
                undelivered_only=True, max_attempts=MAX_RUNS, from_id=start, limit=room
            )
        except Exception as exc:  # the database is away: the next alert done tries again
            self._failures.failed("reading back alerts left in the ledger", exc)
            return
        with self._lock:
            if self._closed:
                return
            rest = page[-1].id + 1 if len(page) == room else None
            if self._left_from != start and self._left_from is not None:  # left meanwhile
                rest = min(self._left_from, rest or self._left_from)
            self._left_from = rest
            # Each was logged as it fired (dispatch): the log has it.
            fresh = [
                replace(a, deliveries={**a.deliveries, "log": "sent"})
                for a in page
                if a.id not in self._held
            ]
            self._held.update(a.id for a in fresh)
        for alert in fresh:
            self._queue.put(alert)

    def _until_due(self) -> float | None:
        """Seconds until the next retry is due; None (wait for an alert) when none is."""
        with self._lock:
            return max(0.0, self._later[0][0] - time.monotonic()) if self._later else None

    def _queue_due(self) -> None:
        with self._lock:
            while self._later and self._later[0][0] <= time.monotonic():
                self._queue.put(heapq.heappop(self._later)[2])

    def _retry_later(self, alert: Alert) -> bool:
        """Schedule the next attempt at ``alert``; whether one is (not after the last)."""
        if alert.attempts >= MAX_RUNS:
            _give_up(alert, dict(alert.deliveries))
            return False
        delay = self.retry_after[min(alert.attempts, len(self.retry_after)) - 1]
        with self._lock:
            if self._closed:
                return False
            due = time.monotonic() + delay
            heapq.heappush(self._later, (due, next(self._order), alert))
            return True

    def _deliver(self, alert: Alert) -> bool:
        """One attempt at ``alert``; whether it is kept for another."""
        # The attempt counts before it is made: a process that ends mid-delivery (or a hung
        # channel) still uses up one of its runs. And it is claimed: a process starting sent
        # again one another was still delivering. The claim hands back the alert as it
        # stands, so what another process delivered since ``alert`` was read is not resent.
        if self.channels and not any(
            _owed(alert.deliveries.get(c.name, "")) for c in self.channels
        ):
            return False  # each channel has it, or refused it for good: no attempt to count
        with self._recording:
            claimed = (
                None
                if self._closed
                else self.ledger.claim_alert_attempt(alert.id, self.claim_seconds)
            )
        if claimed is None:
            return False

        def took(outcome: dict[str, str]) -> None:
            # Each channel's delivery is on record before the next is tried: a process that
            # dies on a later channel (kill -9, a hanging server) leaves the next run only
            # the channels that do not have the alert.
            with self._recording:
                if not self._closed:
                    self.ledger.record_alert_delivery(alert.id, outcome, False, final=False)

        done = {**alert.deliveries, **claimed.deliveries}  # the log has it since dispatch
        outcome, delivered = deliver(
            claimed, self.channels, done=done, backoff=self.backoff, took=took,
            failing=self._failing,
        )  # fmt: skip
        with self._recording:
            if self._closed:
                return False
            self.ledger.record_alert_delivery(alert.id, outcome, delivered)
        if any(_owed(outcome.get(c.name, "")) for c in self.channels):
            return self._retry_later(replace(claimed, deliveries=outcome))
        return False
