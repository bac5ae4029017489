"""A webhook slow to answer an alert it took (a relay that posts it on to a chat service
before it answers), or an SMTP server slow to answer a message it was sent whole (a content
filter), gets it once an attempt, never again at once: the server may have it, and each try
at once sent it again.

A real local webhook (``Receiver``) that records each post as it reads it, then answers late;
a real local SMTP server (sockets and threads in the test) that keeps each message it is sent
whole, then answers late.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from ollama_meter.budgets import AlertDispatcher, EmailChannel, WebhookChannel
from ollama_meter.budgets._alerts import MAX_RUNS
from ollama_meter.ledger import Ledger
from ollama_meter.records import Alert
from tests._raw_http import _Listener
from tests.budgets.test_alert_once import fired
from tests.budgets.test_gate import Receiver, receiver  # noqa: F401 (a fixture)

NOW = (0.0,) * (MAX_RUNS - 1)
"""Try again at once: the schedule's minutes are not what these tests pin."""


def test_a_webhook_answering_in_a_few_seconds_gets_the_alert_once(
    sqlite_url: str,
    receiver: Receiver,  # noqa: F811
) -> None:
    """It answered 200 after 3.5 s, past the 3 s each try waited: the alert was posted 15
    times (3 tries, 5 attempts), and on record as never delivered (failed before)."""
    receiver.delay = 3.5
    ledger = Ledger(sqlite_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush(600.0)  # a bound for a hang, not a timing
    assert [p["threshold"] for p in receiver.posts] == [90]
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (True, 1)
    dispatcher.close()


def test_a_webhook_that_takes_the_alert_and_never_answers_gets_it_once_an_attempt(
    sqlite_url: str,
    receiver: Receiver,  # noqa: F811
) -> None:
    """Each attempt posts it once, not three times: the server may have it each time."""
    receiver.delay = 3600.0  # takes it, and answers in an hour
    ledger = Ledger(sqlite_url)
    hook = WebhookChannel(receiver.url, answer=0.2)
    dispatcher = AlertDispatcher(ledger, [hook], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush(600.0)
    assert len(receiver.posts) == MAX_RUNS
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (False, MAX_RUNS)
    assert row.deliveries["webhook"] == (
        f"failed: {receiver.url.removesuffix('/hook')} was sent the alert and did not answer "
        "(ReadTimeout)"
    )
    dispatcher.close()


class SlowMail(_Listener):
    """A local SMTP server that keeps each message it is sent whole, then answers its end
    (the final ".") after ``delay`` seconds: a content filter scanning it first."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.messages: list[bytes] = []
        super().__init__()
        self.port = self.listener.getsockname()[1]

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            lines = conn.makefile("rb")
            conn.sendall(b"220 mx ready\r\n")
            for line in lines:
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    body = b"".join(iter(lambda: next(lines), b".\r\n"))
                    self.messages.append(body)
                    time.sleep(self.delay)
                    conn.sendall(b"250 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")


def _mailed(server: SlowMail, sqlite_url: str, **channel: float) -> Alert:
    """The alert as on record once ``server`` was offered it, with every attempt at once."""
    ledger = Ledger(sqlite_url)
    to = ["it@x.org"]
    mail = EmailChannel("127.0.0.1", server.port, sender="m@x.org", recipients=to, **channel)
    dispatcher = AlertDispatcher(ledger, [mail], backoff=0, retry_after=NOW)
    try:
        dispatcher.dispatch(fired(ledger))
        assert dispatcher.flush(600.0)  # a bound for a hang, not a timing
    finally:
        server.close()
        dispatcher.close()
    (row,) = ledger.alerts()
    return row


def test_an_smtp_server_answering_a_message_in_a_few_seconds_mails_it_once(
    sqlite_url: str,
) -> None:
    """It took each message and answered its end after 3.5 s (a content filter): the alert
    went out 15 times, 3 tries in each of 5 attempts, on record as never delivered (failed
    before)."""
    server = SlowMail(3.5)
    row = _mailed(server, sqlite_url)
    assert len(server.messages) == 1
    assert (row.delivered, row.attempts, row.deliveries["email"]) == (True, 1, "sent to it@x.org")


def test_an_smtp_server_that_never_answers_a_message_it_took_gets_it_once_an_attempt(
    sqlite_url: str,
) -> None:
    server = SlowMail(3600.0)
    row = _mailed(server, sqlite_url, answer=0.2)
    assert len(server.messages) == MAX_RUNS
    assert (row.delivered, row.attempts) == (False, MAX_RUNS)
    assert row.deliveries["email"] == (
        "failed: 127.0.0.1 was sent the alert and did not answer (Connection unexpectedly closed: "
        "timed out)"
    )
