"""The record of who has an alert while the server deferred others (``failed: sent to A;
deferred ...``) holds across runs: whatever the next try meets, and whatever the configured
addresses hold. A real local SMTP server (aiosmtpd)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from hypothesis import example, given, strategies as st

from ollama_meter.budgets import Alert, EmailChannel, deliver
from ollama_meter.budgets._channels import DEFERRED, SENT, _sent_before
from tests.budgets.test_alert_once import NOV

ALERT = Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")


@contextmanager
def smtp_server(
    port: int, defer: Callable[[str], bool], envelopes: list[list[str]]
) -> Iterator[int]:
    """An SMTP server on ``port`` (0: any) that defers each address ``defer`` says (452), and
    keeps the recipients of each message it takes in ``envelopes``."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    from ollama_meter.testing import unused_port

    class Defer(Sink):  # type: ignore[misc]
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, _: Any) -> str:  # fmt: skip
            if defer(address):
                return "452 4.2.2 mailbox full, try later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            envelopes.append(list(envelope.rcpt_tos))
            return "250 queued"

    controller = Controller(Defer(), hostname="127.0.0.1", port=port or unused_port())
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def test_who_has_the_alert_stays_on_record_when_the_next_try_finds_no_server() -> None:
    """The server deferred busy@ and took it@; the next try of the run met no server, and
    its error took the record's place (``failed: [Errno 111] Connection refused``): the
    next run read nobody as having the alert, and mailed it@ a second time. Found by
    stopping the server between the two tries: envelopes ``[[it@], [it@, busy@]]``."""
    to = ["it@example.org", "busy@example.org"]
    envelopes: list[list[str]] = []
    with smtp_server(0, {"busy@example.org"}.__contains__, envelopes) as port:
        channel = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=to)
        outcome, _ = deliver(ALERT, [channel], attempts=1)
    # the run's next try: the server is away
    outcome, delivered = deliver(replace(ALERT, deliveries=outcome), [channel], attempts=1)
    assert not delivered and outcome["email"].startswith(f"failed: {SENT}it@example.org; ")
    with smtp_server(
        port, lambda _: False, envelopes
    ):  # the next run, the server back and taking all
        again = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=to)
        outcome, delivered = deliver(replace(ALERT, deliveries=outcome), [again], attempts=1)
    assert (outcome["email"], delivered) == ("sent to it@example.org, busy@example.org", True)
    assert envelopes == [["it@example.org"], ["busy@example.org"]]


def test_an_address_holding_commas_does_not_stand_for_another_on_record() -> None:
    """The record's addresses were read back by cutting at ", ", which a quoted address
    holds: ``"x, c@example.org, y"@example.org`` had the alert, so the next run read
    c@example.org as having it too, and c@ (deferred) never got it: envelopes
    ``[["x, c@..., y"@...]]`` only, and the record said it was sent to c@."""
    odd, c = '"x, c@example.org, y"@example.org', "c@example.org"
    envelopes: list[list[str]] = []
    with smtp_server(0, {c}.__contains__, envelopes) as port:
        channel = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=[odd, c])
        outcome, _ = deliver(ALERT, [channel], attempts=1)
        again = EmailChannel("127.0.0.1", port, sender="o@example.org", recipients=[odd, c])
        outcome, delivered = deliver(replace(ALERT, deliveries=outcome), [again], attempts=1)
    assert not delivered and outcome["email"].startswith(f"failed: {SENT}{odd}{DEFERRED}{c} ")
    assert envelopes == [[odd]]


_LOCAL = st.text(alphabet="ab, @.", min_size=1, max_size=12)
_ADDRESSES = st.lists(
    st.one_of(
        st.sampled_from(["a@x.org", "b@x.org", "c@x.org"]),
        _LOCAL.map(lambda local: f'"{local}"@x.org'),
    ),
    min_size=1,
    max_size=5,
    unique=True,
)


@given(_ADDRESSES, st.data())
@example(['"a, c@x.org, b"@x.org', "c@x.org"], None)
def test_the_record_names_who_has_the_alert_and_no_one_else(
    addresses: list[str], data: Any
) -> None:
    """Read back, a record written for any configured addresses (some with ", " inside)
    names no address that did not have the alert."""
    if data is None:
        have = [addresses[0]]
    else:
        have = data.draw(st.lists(st.sampled_from(addresses), unique=True))
    took = ", ".join(a for a in addresses if a in have)
    record = f"failed: {SENT}{took or 'none'}{DEFERRED}z@x.org (452 full, c@x.org, a@x.org)"
    read = _sent_before(record, addresses)
    assert read <= set(have)
    if not any(", " in a for a in addresses):  # one reading only: all of them
        assert read == set(have)
