"""Alert email to an address with letters beyond ASCII before the @ (``jürgen@x.de``).

Config took it, and smtplib then refused the whole message wherever the server did not offer
SMTPUTF8 (most do not): no recipient got any alert, every try of every run. Now SMTPUTF8 is
used where offered; elsewhere that recipient alone is not sent to, said once in the log with
what to do, and the others get the alert, not tried again for it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Alert, EmailChannel, deliver
from tests.budgets.test_alert_once import NOV

LOCALS = ["it", "ops", "jürgen", "zoë", "финансы"]
ALERT = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")


class Mailbox:
    """A real SMTP server (aiosmtpd) offering SMTPUTF8 or not; the envelopes it took."""

    def __init__(self, utf8: bool) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Sink

        from ollama_meter.testing import unused_port

        self.taken: list[tuple[list[str], bytes]] = []
        taken = self.taken

        class Keep(Sink):  # type: ignore[misc]
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                taken.append((list(envelope.rcpt_tos), envelope.original_content))
                return "250 queued"

        self.controller = Controller(
            Keep(), hostname="127.0.0.1", port=unused_port(), enable_SMTPUTF8=utf8
        )
        self.controller.start()

    def channel(self, to: list[str], sender: str = "ometer@example.org") -> EmailChannel:
        return EmailChannel("127.0.0.1", self.controller.port, sender=sender, recipients=to)


@pytest.fixture(scope="module")
def mailboxes() -> Iterator[dict[bool, Mailbox]]:
    boxes = {utf8: Mailbox(utf8) for utf8 in (True, False)}
    yield boxes
    for box in boxes.values():
        box.controller.stop()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    names=st.lists(st.sampled_from(LOCALS), min_size=1, max_size=4, unique=True),
    utf8=st.booleans(),
    named=st.booleans(),
)
def test_each_recipient_the_server_can_take_gets_the_alert_once_and_the_others_are_said(
    mailboxes: dict[bool, Mailbox],
    caplog: pytest.LogCaptureFixture,
    names: list[str],
    utf8: bool,
    named: bool,
) -> None:
    box = mailboxes[utf8]
    box.taken.clear()
    addresses = [f"{name}@example.org" for name in names]
    to = [f"{name.title()} <{a}>" if named else a for name, a in zip(names, addresses, strict=True)]
    takes = [a for a in addresses if utf8 or a.isascii()]
    cannot = [a for a in addresses if a not in takes]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        outcome, delivered = deliver(ALERT, [box.channel(to)], sleep=lambda _: None)
    said = outcome["email"]
    notes = [r.getMessage() for r in caplog.records if "SMTPUTF8" in r.getMessage()]
    if not takes:  # nobody to send to: a failure on record, saying why
        assert not delivered and said.startswith(
            f"undeliverable: not sent to {', '.join(cannot)}: "
        )
        assert "SMTPUTF8" in said and "OMETER_ALERT_EMAIL_TO" in said
        assert box.taken == []
        return
    assert delivered, said
    assert said.startswith(f"sent to {', '.join(takes)}")
    ((rcpt, message),) = box.taken  # one message, once: no try again
    assert rcpt == takes and b"budget at 90%" in message
    if cannot:
        assert said.endswith(
            f"; not sent to {', '.join(cannot)}: 127.0.0.1 does not offer SMTPUTF8, which an "
            "address with letters beyond ASCII before the @ needs; give an ASCII address in "
            "OMETER_ALERT_EMAIL_TO, or use a server that offers SMTPUTF8"
        )
        assert len(notes) == 1 and all(a in notes[0] for a in cannot), notes
        assert not any(a.split("@")[0].encode() in message for a in cannot)  # not even in To:
    else:
        assert notes == [] and "not sent" not in said
    # What is on record is done: the next run sends nothing again.
    box.taken.clear()
    again, _ = deliver(ALERT, [box.channel(to)], done=outcome, sleep=lambda _: None)
    assert again == outcome and box.taken == []


def test_a_sender_beyond_ascii_is_named_where_the_server_cannot_take_it(
    mailboxes: dict[bool, Mailbox],
) -> None:
    box = mailboxes[False]
    box.taken.clear()
    channel = box.channel(["it@example.org"], sender="jürgen@example.org")
    outcome, delivered = deliver(ALERT, [channel], attempts=1, sleep=lambda _: None)
    assert not delivered and box.taken == []
    assert outcome["email"].startswith(
        "undeliverable: not sent from jürgen@example.org: 127.0.0.1 "
    )
    assert "OMETER_SMTP_FROM" in outcome["email"]
    utf8 = mailboxes[True].channel(["it@example.org"], sender="jürgen@example.org")
    sent, delivered = deliver(ALERT, [utf8])
    assert delivered and sent["email"] == "sent to it@example.org"
