"""An alert reaches each channel once, across processes on one ledger, whatever dies when;
and a channel's credentials never travel in clear.

Two ``Ledger`` objects on one database stand for two processes; the channels are stand-ins
for a webhook and an SMTP server (the wire is pinned in test_gate.py and
tests/integrity/test_slow_channels.py).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

from ollama_meter.budgets import Alert, AlertDispatcher
from ollama_meter.ledger import Ledger

NOV = datetime(2026, 11, 1, tzinfo=UTC)


class Sink:
    """A channel that takes every alert and remembers it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[int] = []

    def send(self, alert: Alert) -> str:
        self.got.append(alert.id)
        return f"sent to {self.name}"


class Refusing:
    """A channel whose server refuses every alert."""

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, alert: Alert) -> str:
        raise OSError("550 mailbox unavailable")


class Stuck:
    """A channel that takes the alert and never answers, until let go (a process dying)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered, self.let_go = threading.Event(), threading.Event()

    def send(self, alert: Alert) -> str:
        self.entered.set()
        self.let_go.wait(30)
        raise OSError("connection lost")


def fired(ledger: Ledger, tenant: str = "acme") -> Alert:
    """Budget 1's 90 % alert for ``tenant``, stored as a gate stores it."""
    alert = Alert(0, 1, tenant, "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
    with ledger.budget_transaction() as store:
        alert_id = store.claim_alert(alert, NOV)
    assert alert_id is not None
    return replace(alert, id=alert_id)


def test_a_channel_that_took_the_alert_is_not_sent_it_again_after_its_process_dies(
    db_url: str,
) -> None:
    """What each channel took was written only once every channel was tried: a process that
    died while email hung (its claim then ran out) left no trace that the webhook had the
    alert, and the next run posted it to the webhook a second time."""
    webhook, stuck = Sink("webhook"), Stuck("email")
    first = AlertDispatcher(Ledger(db_url), [webhook, stuck], backoff=0, claim_seconds=0)
    alert = fired(first.ledger)
    first.dispatch(alert)
    assert stuck.entered.wait(30)  # the webhook has it; the process is as good as dead
    email = Sink("email")
    later = AlertDispatcher(Ledger(db_url), [webhook, email], backoff=0)
    (pending,) = later.ledger.alerts(undelivered_only=True)
    later.dispatch(pending)
    assert later.flush(600.0)
    assert (webhook.got, email.got) == ([alert.id], [alert.id])
    stuck.let_go.set()  # the first process wakes up late: it cannot undo the delivery
    assert first.flush(600.0)
    (row,) = later.ledger.alerts()
    assert (row.delivered, row.attempts) == (True, 2)
    assert row.deliveries == {"log": "sent", "webhook": "sent to webhook", "email": "sent to email"}


def test_a_run_that_read_an_alert_before_another_delivered_part_of_it_sends_only_the_rest(
    db_url: str,
) -> None:
    """A run queues the undelivered alerts it reads as it starts; what another process
    delivered between that read and the claim was sent again, from the stale read."""
    webhook = Sink("webhook")
    first = AlertDispatcher(Ledger(db_url), [webhook, Refusing("email")], backoff=0)
    alert = fired(first.ledger)
    later = AlertDispatcher(Ledger(db_url), [webhook, email := Sink("email")], backoff=0)
    (stale,) = later.ledger.alerts(undelivered_only=True)  # read as `later` starts ...
    first.dispatch(alert)  # ... while the process that fired it delivers what it can
    assert first.flush(600.0)
    later.dispatch(stale)
    assert later.flush(600.0)
    assert (webhook.got, email.got) == ([alert.id], [alert.id])
    (row,) = later.ledger.alerts()
    assert (row.delivered, row.attempts) == (True, 2)


def test_an_smtp_password_never_goes_over_a_connection_without_tls() -> None:
    """STARTTLS was used when offered, and the login made either way: a server that does not
    offer it (or a man in the middle who strips the offer) got the password in clear."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink as Discard
    from aiosmtpd.smtp import AuthResult

    from ollama_meter.budgets import EmailChannel, deliver
    from ollama_meter.testing import unused_port

    seen: list[object] = []

    def authenticator(*args: object) -> AuthResult:
        seen.append(args[-1])  # what the client logged in with
        return AuthResult(success=True)

    controller = Controller(
        Discard(),
        hostname="127.0.0.1",
        port=unused_port(),
        authenticator=authenticator,
        auth_require_tls=False,  # a server that takes a login in clear
    )
    controller.start()
    try:
        alert = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
        channel = EmailChannel(
            "127.0.0.1",
            controller.port,
            sender="ometer@example.org",
            recipients=["it@example.org"],
            user="ometer",
            password="s3cr3t",
        )
        outcome, delivered = deliver(alert, [channel], sleep=lambda _: None)
    finally:
        controller.stop()
    assert seen == []
    assert not delivered
    assert outcome["email"] == (
        "undeliverable: 127.0.0.1 does not offer STARTTLS: the OMETER_SMTP_USER login is not "
        "sent in clear (use a server or port that offers STARTTLS, or no user)"
    )
