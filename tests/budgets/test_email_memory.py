"""What the email channel remembers of an alert while the server defers some of its recipients
(who has it already, so that a later try mails only the others), and for how long: until
the process is done with the alert, delivered or given up, never for the process's life.

A real local SMTP server (aiosmtpd) that defers each recipient as many times as a test says.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import AlertDispatcher, EmailChannel
from ollama_meter.budgets._alerts import MAX_RUNS, TRIES
from ollama_meter.ledger import Ledger
from ollama_meter.records import Alert
from tests.budgets.test_alert_once import NOV, fired

TO = ("it@example.org", "busy@example.org")
TRIED = MAX_RUNS * TRIES
"""Sessions a recipient the server defers each time is tried in, before the alert is given up."""


class Server:
    """Defers each address ``defer[address]`` times more, then takes it; keeps what it took.
    ``hold``: the next deferral waits until it is set (``holding`` is set meanwhile)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from ollama_meter.testing import unused_port

        self.defer: dict[str, int] = {}
        self.took: list[tuple[str, str]] = []  # (address, subject)
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        outer = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, _: Any) -> str:  # fmt: skip
                if outer.defer.get(address, 0) > 0:
                    outer.defer[address] -= 1
                    if (hold := outer.hold) is not None:
                        outer.hold = None
                        outer.holding.set()
                        await asyncio.get_running_loop().run_in_executor(None, hold.wait)
                    return "452 4.2.2 mailbox full, try later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                text = envelope.content.decode("utf-8", "replace")
                subject = next(ln for ln in text.splitlines() if ln.startswith("Subject:"))
                outer.took.extend((address, subject) for address in envelope.rcpt_tos)
                return "250 queued"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=unused_port())
        self.controller.start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.controller.stop()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    alerts=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0, 1, TRIES, TRIED - 1, TRIED])),
        min_size=1,
        max_size=4,
    )
)
@example(alerts=[(0, TRIED)] * 3)
def test_the_channel_forgets_each_alert_once_delivered_or_given_up(
    tmp_path_factory: pytest.TempPathFactory, server: Server, alerts: list[tuple[int, int]]
) -> None:
    """Alerts one after another, each with its recipients deferred so many times: each
    recipient gets each alert once (never if deferred for every try), and once the
    dispatcher is done with an alert the channel holds nothing of it. The pinned example
    kept an entry for each alert given up while busy@ was still deferred: [1, 2, 3] held
    after each of 3 alerts, one more for each such alert for as long as the gateway ran."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('mem')}/l.db")
    channel = EmailChannel(
        "127.0.0.1", server.controller.port, sender="o@example.org", recipients=list(TO)
    )
    dispatcher = AlertDispatcher(ledger, [channel], backoff=0, retry_after=(0.0,) * MAX_RUNS)
    server.took.clear()
    expected: list[tuple[str, str]] = []
    held: list[int] = []  # alerts the channel remembers, after each is done
    try:
        for n, deferrals in enumerate(alerts):
            server.defer = dict(zip(TO, deferrals, strict=True))
            alert = fired(ledger, tenant=f"t{n}")
            dispatcher.dispatch(alert)
            assert dispatcher.flush(600.0)  # a bound for a hang, not a timing
            subject = f"Subject: {alert.subject}"
            expected += [(a, subject) for a, d in zip(TO, deferrals, strict=True) if d < TRIED]
            held.append(len(channel._have))
    finally:
        dispatcher.close()
        ledger.dispose()
    assert held == [0] * len(alerts)
    assert sorted(server.took) == sorted(expected)  # each once, in whatever order
    rows = {row.tenant: row.delivered for row in Ledger(ledger.url).alerts()}
    assert rows == {f"t{n}": max(d) < TRIED for n, d in enumerate(alerts)}


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(many=st.integers(1, 40), length=st.integers(1, 60), busy=st.integers(1, 3))
@example(many=30, length=30, busy=1)
def test_a_long_list_of_recipients_gets_an_alert_once_across_runs(
    server: Server, many: int, length: int, busy: int
) -> None:
    """One recipient deferred for ``busy`` runs; the others took the alert at the first. Each
    later run (a channel of its own, as after a restart) mails only who has not got it,
    reading who has from the outcome on record. That record was cut at 500 characters with
    the rest of a failure's text: past about 18 addresses of 30 characters its end marker
    was gone, the next run read that nobody had it, and mailed them all again (the pinned
    example: each of 30 twice)."""
    from ollama_meter.budgets import deliver

    others = [f"{n:03}{'x' * length}@example.org" for n in range(many)]
    to = [*others, "busy@example.org"]
    server.took.clear()
    server.defer = {"busy@example.org": busy}
    alert = fired_alone()
    for _ in range(busy + 1):
        channel = EmailChannel("127.0.0.1", server.controller.port, sender="o@example.org", recipients=to)  # fmt: skip
        outcome, delivered = deliver(alert, [channel], attempts=1)
        alert = replace(alert, deliveries=outcome)
    assert delivered and outcome["email"] == f"sent to {', '.join(to)}"
    assert sorted(address for address, _ in server.took) == sorted(to)  # each once


def test_a_dispatcher_closed_while_its_email_is_sent_forgets_the_alert_at_its_next_close(
    tmp_path: Any, server: Server
) -> None:
    """The dispatcher closed (its exit wait run out) while the email channel was sending an
    alert, another queued behind it, and was opened again by a third before that send ended.
    The first, deferred, was kept for its next run, but close had let go of it already, out
    of the alerts the dispatcher holds; the second, sent after, was kept alike. The next close
    left the channel's entry for each (who has it), for the life of the process:
    {1: {'it@example.org'}} left of the first, {2: ...} of the second, not {}."""
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    channel = EmailChannel(
        "127.0.0.1", server.controller.port, sender="o@example.org", recipients=list(TO)
    )
    dispatcher = AlertDispatcher(ledger, [channel], backoff=0, retry_after=(3600.0,) * MAX_RUNS)
    server.took.clear()
    server.defer = {"busy@example.org": TRIED}
    server.hold, server.holding = threading.Event(), threading.Event()
    release = server.hold
    alerts = [fired(ledger, tenant=f"t{n}") for n in range(3)]
    try:
        dispatcher.dispatch(alerts[0])
        assert server.holding.wait(60)  # it@ took it; busy@'s answer waits
        dispatcher.dispatch(alerts[1])  # queued behind it
        dispatcher.close()  # the exit wait runs out: the send is under way
        dispatcher.dispatch(alerts[2])  # opened again
        release.set()
        assert dispatcher.flush(600.0)  # a bound for a hang, not a timing
        assert sorted(channel._have) == [a.id for a in alerts]  # each deferred for busy@
    finally:
        release.set()
        dispatcher.close()
        ledger.dispose()
    assert channel._have == {}
    assert server.took == [("it@example.org", f"Subject: {a.subject}") for a in alerts]


def fired_alone() -> Alert:
    """An alert as the ledger hands it to a channel, none of them tried yet."""
    return Alert(1, 7, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
