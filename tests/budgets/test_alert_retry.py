"""Alerts reach their channels: a long-running process (the gateway) tries an alert it could
not deliver again by itself, a bounded number of times, never waiting for a restart; email
goes over implicit TLS where the server speaks it (port 465).

A real local webhook (``Receiver``) that refuses a given number of posts; a real local SMTP
server (aiosmtpd) behind TLS.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.budgets import Alert, AlertDispatcher, WebhookChannel
from ollama_meter.budgets._alerts import MAX_RUNS, TRIES
from ollama_meter.ledger import Ledger, close_ledgers, open_ledger
from tests._otlp import SilentCollector, wait_for
from tests.budgets.test_alert_once import NOV, Stuck, fired
from tests.budgets.test_gate import Receiver

NOW = (0.0,) * (MAX_RUNS - 1)
"""Try again at once: the schedule, not its minutes, is what these tests pin."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_a_webhook_down_for_a_moment_gets_the_alert_without_a_restart(
    db_url: str, receiver: Receiver
) -> None:
    """One attempt (three tries within about a second) was all a gateway made: a webhook
    down for those seconds never got the alert until the gateway was restarted, which
    for a service may be weeks later, the period long over."""
    receiver.fail = TRIES  # the whole first attempt
    ledger = Ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush(600.0)  # a bound for a hang, not a timing: a starved CI took 15 s
    assert [p["threshold"] for p in receiver.posts] == [90]
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts, row.deliveries["webhook"]) == (
        True,
        2,
        f"sent to {receiver.url.removesuffix('/hook')}",
    )


def test_a_webhook_that_never_takes_the_alert_is_tried_a_bounded_number_of_times(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail = 10**6
    ledger = Ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
        dispatcher.dispatch(alert)
        assert dispatcher.flush(600.0)  # a bound for a hang, not a timing: a starved CI took 15 s
    assert 10**6 - receiver.fail == MAX_RUNS * TRIES
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (False, MAX_RUNS)
    given_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(given_up) == 1
    # A later run leaves it be, as it would after five runs of processes.
    later = AlertDispatcher(Ledger(db_url), [WebhookChannel(receiver.url)], backoff=0)
    assert later.ledger.alerts(undelivered_only=True, max_attempts=MAX_RUNS) == []


@pytest.fixture
def certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that this process's TLS clients trust."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what ssl.create_default_context() trusts
    return cert, key


def test_email_over_implicit_tls_as_port_465_speaks_it(certificate: tuple[Path, Path]) -> None:
    """Port 465 (SMTPS, RFC 8314) talks TLS from the first byte: ometer waited for a
    greeting the server never sends in clear, and each attempt failed after its timeout
    with "Connection unexpectedly closed: timed out", the password never sent but nor was
    the alert. Implicit TLS is spoken on 465 (or when asked), the login inside it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message
    from aiosmtpd.smtp import AuthResult

    from ollama_meter.budgets import EmailChannel, deliver
    from ollama_meter.testing import unused_port

    received: list[Any] = []
    logins: list[object] = []

    class Collect(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            received.append(message)

    def authenticator(*args: Any) -> AuthResult:
        logins.append(args[-1].login)
        return AuthResult(success=True)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*certificate)
    controller = Controller(
        Collect(), hostname="127.0.0.1", port=unused_port(), ssl_context=tls,
        authenticator=authenticator,
        auth_require_tls=False,  # aiosmtpd counts only STARTTLS as TLS; this one is all TLS
    )  # fmt: skip
    controller.start()
    try:
        channel = EmailChannel(
            "127.0.0.1", controller.port, sender="ometer@example.org",
            recipients=["it@example.org"], user="ometer", password="s3cr3t", implicit_tls=True,
        )  # fmt: skip
        alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
        outcome, delivered = deliver(alert, [channel], sleep=lambda _: None)
    finally:
        controller.stop()
    assert (outcome["email"], delivered) == ("sent to it@example.org", True)
    assert logins == [b"ometer"]
    assert [m["Subject"] for m in received] == ["[ometer] acme/sales budget at 90%"]
    assert EmailChannel("smtp.example.org", 465, sender="a@b.org", recipients=[]).implicit_tls
    assert not EmailChannel("smtp.example.org", 587, sender="a@b.org", recipients=[]).implicit_tls


def test_email_says_which_recipients_the_server_refused() -> None:
    """smtplib sends to the recipients a server takes and returns the ones it refused: the
    ledger said "sent to it@example.org, gone@example.org" for an address that got nothing."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink as Discard

    from ollama_meter.budgets import EmailChannel, deliver
    from ollama_meter.testing import unused_port

    class Refuse(Discard):  # type: ignore[misc]
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, _: Any) -> str:  # fmt: skip
            if address.startswith("gone@"):
                return "550 5.1.1 no such mailbox"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    controller = Controller(Refuse(), hostname="127.0.0.1", port=unused_port())
    controller.start()
    try:
        channel = EmailChannel(
            "127.0.0.1", controller.port, sender="ometer@example.org",
            recipients=["it@example.org", "Gone <gone@example.org>"],
        )  # fmt: skip
        alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
        outcome, delivered = deliver(alert, [channel], sleep=lambda _: None)
    finally:
        controller.stop()
    # Sent, not retried: a retry would mail it@example.org again.
    assert (outcome["email"], delivered) == (
        "sent to it@example.org; refused by the server: gone@example.org "
        "(550 5.1.1 no such mailbox)",
        True,
    )


def test_closing_the_ledgers_ends_the_retries_that_would_record_into_them(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A dispatcher left running after its ledgers closed retried a failed alert a minute
    later, against a ledger that was gone (CI: a dropped PostgreSQL database's error line
    in another test's output). Closing the ledgers closes what records into them."""
    receiver.fail = 10**6
    ledger = open_ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0)
    dispatcher.retry_after = (0.3,) * (MAX_RUNS - 1)
    dispatcher.dispatch(fired(ledger))
    assert dispatcher.flush(600.0)  # the first attempt failed: a retry is due in 0.3 s
    posts = 10**6 - receiver.fail
    assert posts == TRIES
    close_ledgers()
    time.sleep(1.0)  # three retries' worth
    assert 10**6 - receiver.fail == posts  # none of them made
    assert not [r for r in caplog.records if "delivering or recording" in r.getMessage()]


def test_a_hung_webhook_keeps_no_later_alert_out_of_the_log(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The log was said on the delivery thread, behind the channels: a webhook that accepts
    and never answers (each attempt 3 tries of its timeout) kept a budget's 100 % alert,
    fired with its 90 %, out of the log for as long (27 s by default), and a gateway
    stopped meanwhile never said it at all. Each alert is said once, as it fires."""
    with SilentCollector() as hung:  # any server that accepts and never answers
        ledger = Ledger(db_url)
        webhook = WebhookChannel(f"{hung.url}/hook", timeout=0.2)
        dispatcher = AlertDispatcher(ledger, [webhook], backoff=0, retry_after=(3600.0,) * 4)
        ninety = fired(ledger)
        hundred = replace(ninety, id=0, threshold=100, spent=10)
        with ledger.budget_transaction() as store:
            hundred = replace(hundred, id=store.claim_alert(hundred, NOV) or 0)
        with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
            dispatcher.dispatch(ninety)
            dispatcher.dispatch(hundred)
            wait_for(lambda: hung.connections, what="the webhook posted to")
            said = [r.getMessage() for r in caplog.records if "budget alert:" in r.getMessage()]
            assert [line.split("crossed ")[1][:4] for line in said] == ["90%:", "100%"]
            # Said within the 10 s the webhook is given to answer: the attempts end at once
            # now, unanswered, rather than each after those 10 s.
            hung.hang_up()
            assert dispatcher.flush(600.0)  # both attempts over: neither is said again
        said = [r.getMessage() for r in caplog.records if "budget alert:" in r.getMessage()]
        assert len(said) == 2
        assert {row.deliveries["log"] for row in ledger.alerts()} == {"sent"}
        dispatcher.close()


def test_a_closed_dispatcher_does_not_wait_again_for_a_hung_channel(db_url: str) -> None:
    """A process ending closes its dispatcher (waiting a moment for a channel that hangs),
    then its exit hook waited once more for the same hung delivery: twice the moment a
    gateway's SIGTERM was documented to cost."""
    stuck = Stuck("webhook")
    ledger = Ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [stuck], backoff=0)
    try:
        dispatcher.dispatch(fired(ledger))
        assert stuck.entered.wait(30)
        dispatcher.close()  # waits its moment: the delivery still hangs
        threading.Timer(1.0, stuck.let_go.set).start()  # then it ends, in a while
        # What the exit hook calls: it returns at once, not once the delivery ended.
        assert dispatcher.flush(60.0) is False
    finally:
        stuck.let_go.set()


def _taking_server(
    quit_answer: bytes | None = b"221 bye\r\n", *, ehlo: bool = True
) -> tuple[int, list[bytes], threading.Event]:
    """A loopback SMTP server that takes every message (kept in the list it returns) and
    then answers QUIT with ``quit_answer`` (None: not at all, until the event is set).
    Without ``ehlo`` it speaks RFC 821 only: HELO, and no mail before it."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    taken: list[bytes] = []
    stop = threading.Event()

    def session(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 mx ready\r\n")
            greeted = False
            for line in lines:
                verb = line[:4].upper()
                if verb == b"EHLO" and not ehlo:
                    conn.sendall(b"502 5.5.2 command not recognized\r\n")
                elif verb in (b"EHLO", b"HELO"):
                    greeted = True
                    conn.sendall(b"250-mx\r\n250 8BITMIME\r\n" if ehlo else b"250 mx\r\n")
                elif verb == b"MAIL" and not greeted:
                    conn.sendall(b"503 5.5.1 say HELO first\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    message = b"".join(iter(lines.readline, b".\r\n"))
                    taken.append(message)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    if quit_answer is None:
                        stop.wait(30)
                    else:
                        conn.sendall(quit_answer)
                    return
                else:
                    conn.sendall(b"250 OK\r\n")

    def serve() -> None:
        with listener:
            while not stop.is_set():
                conn, _ = listener.accept()
                threading.Thread(target=session, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], taken, stop


def _mailed(
    quit_answer: bytes | None = b"221 bye\r\n",
    *,
    ehlo: bool = True,
    sender: str = "ometer@example.org",
    to: str = "it@example.org",
) -> tuple[str, bool, list[bytes]]:
    """An alert sent by email to :func:`_taking_server`: its outcome, whether it was
    delivered, and the messages the server took. Every answer is waited for as long as
    each of the session's reads, the message's too: a QUIT never answered ends the
    session after that second, not after the 10 s a message's answer is given by default."""
    from ollama_meter.budgets import EmailChannel, deliver

    port, taken, stop = _taking_server(quit_answer, ehlo=ehlo)
    channel = EmailChannel(
        "127.0.0.1", port, sender=sender, recipients=[to], timeout=1.0, answer=1.0
    )
    alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
    try:
        outcome, delivered = deliver(alert, [channel], sleep=lambda _: None)
    finally:
        stop.set()
    return outcome["email"], delivered, taken


@pytest.mark.parametrize(
    "quit_answer", [b"500 5.5.1 what?\r\n", b"250 OK\r\n", None], ids=["500", "250", "silent"]
)
def test_an_email_the_server_took_is_sent_once_however_it_answers_quit(
    quit_answer: bytes | None,
) -> None:
    """The message was the server's once it answered the DATA with 250: a QUIT answered with
    anything but 221 (or not at all within the timeout) failed the attempt, so the alert was
    mailed again, three times an attempt, each attempt again until the runs ran out."""
    said, delivered, taken = _mailed(quit_answer)
    assert (said, delivered) == ("sent to it@example.org", True)
    assert len(taken) == 1 and b"budget at 90%" in taken[0]


def test_an_smtp_server_that_speaks_only_helo_gets_the_alert() -> None:
    """The channel greeted with EHLO only: a server of RFC 821 answers it 502, and smtplib
    (its EHLO answer on record, a failure) never said HELO, so every MAIL was refused."""
    said, delivered, taken = _mailed(ehlo=False)
    assert (said, delivered, len(taken)) == ("sent to it@example.org", True, 1)


@pytest.mark.parametrize("to", ["it@müller.example", "IT Müller <it@müller.example>"])
def test_an_address_at_an_international_domain_gets_the_alert_from_any_server(to: str) -> None:
    """OMETER_ALERT_EMAIL_TO took ``it@müller.example``, and smtplib then asked the server for
    SMTPUTF8, which most do not offer: every delivery failed, each run again. The domain is
    sent as DNS writes it (``xn--mller-kva.example``), which needs nothing of the server."""
    said, delivered, taken = _mailed(sender="ometer@bücher.example", to=to)
    assert delivered, said
    (message,) = taken
    assert b"it@xn--mller-kva.example" in message and b"ometer@xn--bcher-kva.example" in message


def test_a_recipient_the_server_defers_gets_the_alert_later_and_the_others_once() -> None:
    """A 4xx to one recipient (a full mailbox: try later) was taken as final: the alert was
    on record as sent, and that recipient never got it. It is tried again, for that recipient
    alone, by this process (the next try) and by the next run (from what the ledger says)."""
    from ollama_meter.budgets import EmailChannel, deliver
    from tests.budgets.test_alert_deferred_record import smtp_server

    envelopes: list[list[str]] = []
    deferred: list[str] = []

    def defer(address: str) -> bool:  # busy@, its first two times
        if address.startswith("busy@") and len(deferred) < 2:
            deferred.append(address)
            return True
        return False

    with smtp_server(0, defer, envelopes) as port:
        to = ["it@example.org", "Busy <busy@example.org>"]
        channel = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=to)
        alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
        outcome, delivered = deliver(alert, [channel], attempts=1, sleep=lambda _: None)
        assert not delivered and outcome["email"].startswith(
            "failed: sent to it@example.org; deferred by the server (tried again): busy@example.org (452"
        )
        # the next run: a channel of its own, the alert as the ledger keeps it
        again = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=to)
        outcome, delivered = deliver(replace(alert, deliveries=outcome), [again], attempts=1)
        assert not delivered and outcome["email"].startswith(  # deferred once more, alone
            "failed: sent to it@example.org; deferred by the server (tried again): busy@"
        )
        outcome, delivered = deliver(alert, [channel], sleep=lambda _: None)  # this process
    assert (outcome["email"], delivered) == ("sent to it@example.org, busy@example.org", True)
    assert envelopes == [["it@example.org"], ["busy@example.org"]]
