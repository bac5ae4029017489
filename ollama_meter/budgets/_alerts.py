"""Budget alerts: the message, the channels it goes to, and delivery that never blocks a call.

The log gets the alert as it fires. A webhook (Slack-compatible JSON) and email (SMTP:
implicit TLS on port 465, elsewhere STARTTLS when offered) get it when configured, on a
background thread with retries and backoff; what happened is written back to the alert's
row. A failed attempt is made again by the same process after :data:`RETRY_AFTER` (a
gateway runs for weeks), and undelivered alerts by the next run."""

from __future__ import annotations

import atexit
import contextlib
import heapq
import itertools
import logging
import queue
import random
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from email.message import EmailMessage
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, Protocol

from ollama_meter._forks import renew_after_fork
from ollama_meter._logging import Throttled
from ollama_meter._runtime import runtime
from ollama_meter._urls import shown
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


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> str:
        """Deliver; return where it went. Raise on failure."""
        ...


CHANNEL_TIMEOUT = 3.0
"""Seconds a channel may take to take an alert; a hanging one is a failed attempt."""
EXIT_WAIT = 1.0
"""Seconds a process that is ending waits for alerts still being delivered."""
CLAIM_SECONDS = 120.0
"""Seconds a process holds an alert it is delivering: no other sends it meanwhile. Longer
than a delivery takes (three tries per channel, each bounded by :data:`CHANNEL_TIMEOUT`);
a process that dies mid-delivery holds it that long, then the next run tries it again."""


class _Cut:
    """Ends an HTTP exchange from another thread: called, it shuts the connection's socket
    (a read waiting on it returns at once). ``trace`` is the httpcore hook that finds it."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.done = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.streams.append(info.get("return_value"))

    def __call__(self) -> None:
        self.done = True
        if self.streams:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                self.streams[-1].get_extra_info("socket").shutdown(socket.SHUT_RDWR)


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, timeout: float = CHANNEL_TIMEOUT) -> None:
        self.url = url
        self.where = shown(url, path=False)  # a webhook's path is its secret
        self.timeout = timeout

    def send(self, alert: Alert) -> str:
        import httpx  # loaded when an alert goes out, not by every command that reads budgets

        # Streamed, the body never read: the status says it all, and a webhook that answers
        # with an endless body (a URL that serves a download) held the alert thread for
        # ever, its memory growing, every later alert queued behind it. The timeout bounds
        # each read, not the answer: one trickled a byte at a time is cut by a watchdog.
        cut = _Cut()
        watchdog = threading.Timer(self.timeout * 3, cut)
        watchdog.daemon = True
        try:
            with httpx.Client(timeout=self.timeout) as client:
                request = client.build_request(
                    "POST", self.url, json=alert.payload(), extensions={"trace": cut.trace}
                )
                watchdog.start()
                response = client.send(request, stream=True)
                status, reason = response.status_code, response.reason_phrase
                response.close()
        except httpx.HTTPError as exc:
            if cut.done:
                raise OSError(
                    f"{self.where} did not answer within {self.timeout * 3:g} s"
                ) from None
            raise OSError(f"{type(exc).__name__} posting to {self.where}") from None
        finally:
            watchdog.cancel()
        if not 200 <= status < 300:
            raise OSError(f"{self.where} answered {status} {reason}")
        return f"sent to {self.where}"


SMTP_REPLY_BYTES = 256 * 1024
"""Bytes an SMTP server may send in one session: a few hundred make a normal one."""


class _Session(smtplib.SMTP):
    """An SMTP session bounded in the bytes it reads and, by :meth:`cut`, in time.

    ``timeout`` bounds each read, not the session: a server that never ends a multi-line
    reply (or trickles it) held the alert thread for ever, smtplib collecting every line.
    """

    def __init__(self, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(timeout=timeout)  # no host: connect() below, once it can be cut
        self._left = SMTP_REPLY_BYTES
        self._tls = tls

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own hook (SMTP_SSL overrides it too); typeshed leaves it out.
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        if self._tls is None:
            return sock
        return self._tls.wrap_socket(sock, server_hostname=host)  # implicit TLS: SMTPS

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:  # a new socket (connect, STARTTLS)
            self.file = _Counted(self, self.sock.makefile("rb"))
        return super().getreply()

    def count(self, line: bytes) -> bytes:
        self._left -= len(line)
        if self._left < 0:
            raise OSError(f"the server sent more than {SMTP_REPLY_BYTES} bytes")
        return line

    def cut(self) -> None:
        """End the session from another thread: a read waiting in it returns at once."""
        with contextlib.suppress(OSError, AttributeError, ValueError):
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_RDWR)


class _Counted:
    """The reader smtplib reads replies from, its bytes counted against the session's."""

    def __init__(self, session: _Session, reader: Any) -> None:
        self.session, self.reader = session, reader

    def readline(self, size: int = -1) -> bytes:
        return self.session.count(self.reader.readline(size))

    def close(self) -> None:
        self.reader.close()


SMTPS_PORT = 465
"""The port of SMTP over implicit TLS (RFC 8314): TLS from the first byte, no STARTTLS."""


class EmailChannel:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        recipients: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        timeout: float = CHANNEL_TIMEOUT,
        implicit_tls: bool | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.sender, self.recipients = sender, list(recipients)
        self.user, self.password = user, password
        self.timeout = timeout
        # On 465 the server waits for a TLS hello: spoken in clear, each attempt timed out.
        self.implicit_tls = port == SMTPS_PORT if implicit_tls is None else implicit_tls

    def send(self, alert: Alert) -> str:
        message = EmailMessage()
        message["Subject"] = alert.subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.text() + "\n")
        smtp = _Session(self.timeout, ssl.create_default_context() if self.implicit_tls else None)
        # A whole session (about six exchanges) within three reads' timeout.
        watchdog = threading.Timer(self.timeout * 3, smtp.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            refused = self._send(smtp, message)
        finally:
            watchdog.cancel()
            smtp.close()
        took = ", ".join(r for r in self.recipients if parseaddr(r)[1] not in refused)
        if not refused:
            return f"sent to {took}"
        # Not a failure to retry: the others have it, and would get it again.
        said = ", ".join(
            f"{r} ({code} {reply.decode(errors='replace')})" for r, (code, reply) in refused.items()
        )
        log.warning("alert email to %s refused by %s: %s", ", ".join(refused), self.host, said)
        return f"sent to {took}; refused by the server: {said}"

    def _send(self, smtp: smtplib.SMTP, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Send ``message``; the recipients the server refused (all refused raises)."""
        with smtp:
            smtp.connect(self.host, self.port)
            smtp.ehlo()
            if self.implicit_tls:
                pass  # TLS from the first byte: the login below goes inside it
            elif smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            elif self.user:  # no offer (or one stripped on the way): the password stays here
                raise OSError(
                    f"{self.host} does not offer STARTTLS: the OMETER_SMTP_USER login is not "
                    "sent in clear (use a server or port that offers STARTTLS, or no user)"
                )
            if self.user:
                smtp.login(self.user, self.password or "")
            return smtp.send_message(message)


def deliver(
    alert: Alert,
    channels: Sequence[Channel],
    *,
    done: Mapping[str, str] | None = None,
    attempts: int = TRIES,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    took: Callable[[dict[str, str]], None] | None = None,
) -> tuple[dict[str, str], bool]:
    """Send to every channel not yet done, retrying with jittered backoff; never raises.

    ``took`` is told the outcome so far each time a channel takes the alert, before the next
    is tried. Returns what happened per channel and whether all of them have it now.
    """
    outcome = dict(done or {})
    if not outcome.get("log", "").startswith("sent"):
        said(alert)
    outcome["log"] = "sent"
    for channel in channels:
        if outcome.get(channel.name, "").startswith("sent"):
            continue
        for attempt in range(1, attempts + 1):
            try:
                outcome[channel.name] = channel.send(alert)
            except Exception as exc:  # a channel's failure must never reach the call
                outcome[channel.name] = f"failed: {exc}"[:500]
                if attempt < attempts:
                    sleep(backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
            else:
                if took is not None:
                    took(dict(outcome))
                break
        if not outcome[channel.name].startswith("sent"):
            log.warning(
                "alert %d not delivered by %s: %s", alert.id, channel.name, outcome[channel.name]
            )
    delivered = all(value.startswith("sent") for value in outcome.values())
    return outcome, delivered


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
    ) -> None:
        self.ledger = ledger
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
        renew_after_fork(self)

    def _after_fork(self) -> None:
        """A forked child delivers its own alerts, on a thread of its own (the parent's is not
        there); what the parent had queued is the parent's to send."""
        self._queue = queue.Queue()
        self._later = []
        self._thread = None
        self._lock, self._recording = threading.Lock(), threading.Lock()

    def dispatch(self, alert: Alert) -> None:
        """Log ``alert`` now (on the delivery thread, a hung webhook kept every later alert out
        of the log too), and queue it for the channels that do not have it yet."""
        if not alert.deliveries.get("log", "").startswith("sent"):
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
        self._queue.put(alert)

    def close(self) -> None:
        """Wait a moment (:data:`EXIT_WAIT`) for alerts going out, then record nothing more:
        the ledger is about to close. What was not delivered is retried by the next run."""
        self.flush(EXIT_WAIT)
        with self._recording:
            self._closed, self._part = True, False
        with self._lock:
            self._later.clear()  # the ledger closes: the next run tries them

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
            try:
                self._deliver(alert)
            except Exception as exc:  # the database is away: a line per kind every 10 s
                self._failures.failed("delivering or recording alert %d", exc, alert.id)
            finally:
                self._queue_due()  # before this one is done: flush() sees a retry due now
                self._queue.task_done()

    def _until_due(self) -> float | None:
        """Seconds until the next retry is due; None (wait for an alert) when none is."""
        with self._lock:
            return max(0.0, self._later[0][0] - time.monotonic()) if self._later else None

    def _queue_due(self) -> None:
        with self._lock:
            while self._later and self._later[0][0] <= time.monotonic():
                self._queue.put(heapq.heappop(self._later)[2])

    def _retry_later(self, alert: Alert) -> None:
        if alert.attempts >= MAX_RUNS:
            _give_up(alert, dict(alert.deliveries))
            return
        delay = self.retry_after[min(alert.attempts, len(self.retry_after)) - 1]
        with self._lock:
            if not self._closed:
                due = time.monotonic() + delay
                heapq.heappush(self._later, (due, next(self._order), alert))

    def _deliver(self, alert: Alert) -> None:
        # The attempt counts before it is made: a process that ends mid-delivery (or a hung
        # channel) still uses up one of its runs. And it is claimed: a process starting sent
        # again one another was still delivering. The claim hands back the alert as it
        # stands, so what another process delivered since ``alert`` was read is not resent.
        with self._recording:
            claimed = (
                None
                if self._closed
                else self.ledger.claim_alert_attempt(alert.id, self.claim_seconds)
            )
        if claimed is None:
            return

        def took(outcome: dict[str, str]) -> None:
            # Each channel's delivery is on record before the next is tried: a process that
            # dies on a later channel (kill -9, a hanging server) leaves the next run only
            # the channels that do not have the alert.
            with self._recording:
                if not self._closed:
                    self.ledger.record_alert_delivery(alert.id, outcome, False, final=False)

        done = {**alert.deliveries, **claimed.deliveries}  # the log has it since dispatch
        outcome, delivered = deliver(
            claimed, self.channels, done=done, backoff=self.backoff, took=took
        )
        with self._recording:
            if self._closed:
                return
            self.ledger.record_alert_delivery(alert.id, outcome, delivered)
        if not delivered:
            self._retry_later(replace(claimed, deliveries=outcome))
