"""A webhook or SMTP server that refuses an alert in a way no later try changes (a redirect, a
404, every recipient refused): the alert is offered to it once, not five attempts of three
tries, and its failure is one log line that says what to change. A server that fails for now
(a 503) is tried again as before, its failure said once while it lasts, not once a try.

Real loopback servers (sockets and threads in the test) that count what reaches them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from ollama_meter.budgets import AlertDispatcher, EmailChannel, WebhookChannel, given_up
from ollama_meter.budgets._alerts import MAX_RUNS, TRIES
from ollama_meter.ledger import Ledger
from tests.budgets.test_alert_once import fired as stored
from tests.integrity.test_slow_channels import fired

NOW = (0.0,) * (MAX_RUNS - 1)
"""Try again at once: the schedule's minutes are not what these tests pin."""

Handler = Callable[[socket.socket, int], None]


class Counting:
    """A loopback server that runs ``handler`` on each connection and counts them."""

    def __init__(self, handler: Handler) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                self.connections += 1
                threading.Thread(target=self._session, args=(conn, handler), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def _session(self, conn: socket.socket, handler: Handler) -> None:
        with contextlib.suppress(OSError), conn:
            handler(conn, self.port)


@contextlib.contextmanager
def counting(handler: Handler) -> Iterator[Counting]:
    server = Counting(handler)
    try:
        yield server
    finally:
        server.listener.close()


def _answer(status: bytes, *headers: bytes) -> Handler:
    def handle(conn: socket.socket, port: int) -> None:
        request = b""
        while b"\r\n\r\n" not in request and (got := conn.recv(65_536)):
            request += got
        head = b"".join(h.replace(b"PORT", str(port).encode()) + b"\r\n" for h in headers)
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + head + b"content-length: 0\r\n\r\n")

    return handle


def _smtp(rcpt: bytes, mail: bytes = b"250 OK") -> Handler:
    def handle(conn: socket.socket, port: int) -> None:
        lines = conn.makefile("rb")
        conn.sendall(b"220 mx ready\r\n")
        for line in lines:
            verb = line[:4].upper()
            answer = {b"RCPT": rcpt, b"MAIL": mail, b"QUIT": b"221 bye"}.get(verb, b"250 OK")
            conn.sendall(answer + b"\r\n")
            if verb == b"QUIT":
                return

    return handle


HOOKS = {
    "redirect to itself": (
        _answer(b"302 Found", b"location: http://127.0.0.1:PORT/hook"),
        "http://127.0.0.1:{port} answered 302 Found, redirecting to http://127.0.0.1:{port}: an alert "
        "is posted only to OMETER_ALERT_WEBHOOK_URL, never on; set it to the address the "
        "redirect names",
    ),
    "redirect elsewhere": (
        _answer(b"301 Moved Permanently", b"location: https://hooks.example.org/T0/B1/secret"),
        "http://127.0.0.1:{port} answered 301 Moved Permanently, redirecting to "
        "https://hooks.example.org: an alert is posted only to OMETER_ALERT_WEBHOOK_URL, "
        "never on; set it to the address the redirect names",
    ),
    "redirect to no address": (
        _answer(b"307 Temporary Redirect"),
        "http://127.0.0.1:{port} answered 307 Temporary Redirect, redirecting to an address it "
        "does not say (no readable Location): an alert is posted only to "
        "OMETER_ALERT_WEBHOOK_URL, never on; set it to the address the redirect names",
    ),
    "not there": (
        _answer(b"404 Not Found"),
        "http://127.0.0.1:{port} answered 404 Not Found: no later try changes that; check "
        "OMETER_ALERT_WEBHOOK_URL (its path is the webhook's secret)",
    ),
}
MAILS = {
    "every recipient refused": (
        _smtp(b"550 5.1.1 no such user"),
        "127.0.0.1 refused every recipient: it@x.org (550 5.1.1 no such user), "
        "ops@x.org (550 5.1.1 no such user); check OMETER_ALERT_EMAIL_TO",
    ),
    "sender refused": (
        _smtp(b"250 OK", mail=b"553 5.7.1 sender not allowed"),
        "127.0.0.1 refused the sender m@x.org (553 5.7.1 sender not allowed); check "
        "OMETER_SMTP_FROM",
    ),
}


@pytest.mark.parametrize("case", [*HOOKS, *MAILS])
def test_an_alert_a_server_refuses_for_good_is_offered_once_and_said_once(
    case: str, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each was a failure like a timeout: three tries an attempt, five attempts (15 POSTs to a
    redirect loop, 15 SMTP sessions refused alike), and a WARNING each attempt, six lines an
    alert with the give-up, none saying what to change (the email's a Python dict)."""
    handler, said = HOOKS[case] if case in HOOKS else MAILS[case]
    ledger = Ledger(sqlite_url)
    with counting(handler) as server:
        channel: WebhookChannel | EmailChannel
        if case in HOOKS:
            channel = WebhookChannel(f"http://127.0.0.1:{server.port}/hook", timeout=1.0)
        else:
            channel = EmailChannel(
                "127.0.0.1", server.port, sender="m@x.org", recipients=["it@x.org", "ops@x.org"]
            )
        dispatcher = AlertDispatcher(ledger, [channel], backoff=0, retry_after=NOW)
        with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
            for threshold in (75, 90):
                dispatcher.dispatch(fired(ledger, threshold))
            assert dispatcher.flush(600.0)  # a hang guard, not a measure
            # A run that starts later does not try them again either.
            later = AlertDispatcher(ledger, [channel], backoff=0, retry_after=NOW)
            for alert in ledger.alerts(undelivered_only=True, max_attempts=MAX_RUNS):
                later.dispatch(alert)
            assert later.flush(600.0)
        assert server.connections == 2  # once each
    expected = said.format(port=server.port)
    assert [
        (a.delivered, a.attempts, a.deliveries[channel.name], given_up(a)) for a in ledger.alerts()
    ] == [(False, 1, f"undeliverable: {expected}", True)] * 2  # what `budget status` says
    lines = [r.getMessage() for r in caplog.records if "budget alert:" not in r.getMessage()]
    assert lines == [
        f"alerts not delivered by {channel.name}: {expected}; not tried again. Later alerts "
        "there are not logged again until it takes one (`ometer budget status` lists them)"
    ]


def test_a_server_failing_for_now_is_tried_again_and_its_failure_said_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 (or a hang, a reset) is tried again, as documented; three alerts failing on it
    said so in fifteen lines, five an alert, besides each alert's give-up."""
    ledger = Ledger(sqlite_url)
    with counting(_answer(b"503 Service Unavailable")) as server:
        channel = WebhookChannel(f"http://127.0.0.1:{server.port}/hook", timeout=1.0)
        dispatcher = AlertDispatcher(ledger, [channel], backoff=0, retry_after=NOW)
        with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
            for threshold in (50, 75, 90):
                dispatcher.dispatch(fired(ledger, threshold))
            assert dispatcher.flush(600.0)
        assert server.connections == 3 * MAX_RUNS * TRIES
    lines = [r.getMessage() for r in caplog.records if "budget alert:" not in r.getMessage()]
    failing = [line for line in lines if not line.startswith("giving up")]
    assert failing == [
        f"alerts not delivered by webhook: http://127.0.0.1:{server.port} answered 503 Service "
        "Unavailable; each is tried again, 5 attempts in all: check the server "
        "OMETER_ALERT_WEBHOOK_URL names. Later alerts there are not logged again until it "
        "takes one (`ometer budget status` lists them)"
    ]
    assert len(lines) == 1 + 3  # and each alert's give-up, after its fifth attempt


class Holding:
    """A webhook that takes each POST and answers 200 only once let go: hanging, as long as
    the test wants, with every alert that reaches it counted by its tenant."""

    def __init__(self) -> None:
        self.let_go = threading.Event()
        self.got: list[str] = []
        self.server = Counting(self._handle)

    def _handle(self, conn: socket.socket, port: int) -> None:
        request = b""
        while b"\r\n\r\n" not in request and (got := conn.recv(65_536)):
            request += got
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length and (got := conn.recv(65_536)):
            body += got
        self.let_go.wait(60)
        self.got.append(json.loads(body)["tenant"])
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def test_alerts_fired_while_a_webhook_hangs_wait_in_the_ledger_not_in_memory(
    sqlite_url: str,
) -> None:
    """Delivery is one thread, and a hanging webhook holds an attempt some ten seconds (three
    tries of 3 s): every alert fired meanwhile (an hour of crossings, a budget per tenant)
    was queued in memory, as was every one a starting gateway found undelivered. Each is a
    row in the ledger: past ``max_held`` they wait there, and are read back as room frees,
    each delivered once."""
    hook = Holding()
    ledger = Ledger(sqlite_url)
    channel = WebhookChannel(f"http://127.0.0.1:{hook.server.port}/hook", timeout=30)
    dispatcher = AlertDispatcher(ledger, [channel], backoff=0, retry_after=NOW, max_held=10)
    tenants = [f"t{n}" for n in range(60)]
    try:
        for tenant in tenants:
            dispatcher.dispatch(stored(ledger, tenant))
        assert dispatcher.held == 10  # the first in the webhook's hands, nine queued
        hook.let_go.set()
        assert dispatcher.flush(600.0)  # a hang guard, not a measure
    finally:
        hook.let_go.set()
        hook.server.listener.close()
    assert sorted(hook.got) == sorted(tenants)  # each once
    assert [a.delivered for a in ledger.alerts()] == [True] * 60
    assert dispatcher.held == 0
