"""A webhook or an OTLP collector that hangs never holds a CLI call for long, and loses nothing.

Real processes (`ometer chat`), real servers that accept and then say nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from ollama_meter.budgets import Alert
from ollama_meter.ledger import Ledger
from ollama_meter.testing import OllamaEmulator
from tests._otlp import SilentCollector
from tests.gateway.test_processes import OMETER


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts every connection and never answers."""
    with SilentCollector() as server:
        yield server.url


def chat(
    env: dict[str, str], dept: str = "sales"
) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [*OMETER, "chat", "--dept", dept, "-m", "llama3.1:8b", "-o", "num_predict=4", "hi"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done, time.monotonic() - began


def test_a_hanging_webhook_does_not_hold_the_cli_and_its_attempt_is_on_record(
    emulator: OllamaEmulator, tmp_path: Path, silent_server: str
) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    base = {**os.environ, "OLLAMA_HOST": emulator.url, "OMETER_DB_URL": db}
    setup = [
        ["pricing", "set", "*", "--input-per-1m", "1000"],
        ["budget", "set", "sales", "--monthly", "0.000001", "--soft", "--thresholds", "100"],
    ]
    for args in setup:
        subprocess.run([*OMETER, *args], env=base, check=True, capture_output=True)
    hooked = {**base, "OMETER_ALERT_WEBHOOK_URL": f"{silent_server}/hook"}
    done, _ = chat(hooked)
    assert done.returncode == 0, done.stderr
    # The webhook hangs for ever; its three 3 s tries take 9 s and more, then their failure
    # is recorded. None is: the run ended (after its 1 s at exit) with the attempt going on
    # (the log's is: recorded with the claim, said once it was committed).
    (alert,) = Ledger(db).alerts()
    assert (alert.attempts, alert.delivered, alert.deliveries) == (1, False, {"log": "sent"})
    # The first run may have delivered it as it ended: the next run within the claim
    # (120 s) leaves it be, so it is never sent twice; one after the claim tries it again
    # (once per run, up to five runs), still without waiting long.
    for tried in (1, 2):
        done, _ = chat(hooked)
        assert done.returncode == 0, done.stderr
        # A month that began between the runs has an alert of its own (tried once).
        again = [a for a in Ledger(db).alerts() if a.period_start == alert.period_start]
        assert [(a.attempts, a.delivered) for a in again] == [(tried, False)]
        assert again[0].deliveries == {"log": "sent"}
        with Ledger(db).write() as conn:
            conn.execute(sqlalchemy.text("UPDATE budget_alerts SET claimed_until = NULL"))


def test_an_unreachable_collector_costs_at_most_the_export_timeout(
    emulator: OllamaEmulator, tmp_path: Path, silent_server: str
) -> None:
    base = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    chat(base)
    exporting = {
        **base,
        "OTEL_EXPORTER_OTLP_ENDPOINT": silent_server,
        "OMETER_EXPORT_TIMEOUT": "1",
    }
    done, _ = chat(exporting)
    assert done.returncode == 0, done.stderr
    assert "telemetry" in done.stderr  # it says what was not sent
    spans = subprocess.run(
        [*OMETER, "log", "--json"], env=base, capture_output=True, text=True, check=True
    )
    assert len(json.loads(spans.stdout)) == 2  # the ledger has both calls regardless


def test_telemetry_shutdown_is_bounded_by_the_export_timeout(
    silent_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """However the exporters retry, the exit waits for them at most OMETER_EXPORT_TIMEOUT.

    Against a collector that never answers, flushing and then shutting down take the
    timeout twice over (each export waits it out): the exit stops waiting half way, with
    the exports still going, and says so."""
    from ollama_meter.config import load_settings
    from ollama_meter.telemetry._setup import Telemetry
    from tests.factories import make_span

    telemetry = Telemetry(load_settings(otlp_endpoint=silent_server, export_timeout=2.0))
    telemetry.observer.on_start(make_span())
    telemetry.observer.on_end(make_span())
    began = time.monotonic()
    telemetry.shutdown()
    assert time.monotonic() - began < 30  # a hang guard, not a measure
    assert capsys.readouterr().err == (
        f"warning: could not export telemetry to {silent_server}/v1/traces, "
        f"{silent_server}/v1/metrics within OMETER_EXPORT_TIMEOUT (2 s); what was not sent "
        "is dropped\n"
    )


def fired(ledger: Ledger, threshold: int = 100) -> Alert:
    """An alert as a gate fires it: stored in the ledger first, then dispatched."""
    when = datetime(2026, 11, 1, tzinfo=UTC)
    alert = Alert(0, 1, "acme", None, "month", "2026-11", when, threshold, 5, 5, "USD")
    with ledger.budget_transaction() as store:
        alert_id = store.claim_alert(alert, when)
    assert alert_id is not None
    return replace(alert, id=alert_id)


def test_alert_delivery_at_exit_is_bounded(silent_server: str, tmp_path: Path) -> None:
    from ollama_meter.budgets import AlertDispatcher, WebhookChannel
    from ollama_meter.budgets._alerts import EXIT_WAIT

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(silent_server)])
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    began = time.monotonic()
    assert dispatcher.flush(EXIT_WAIT) is False  # not delivered ...
    assert time.monotonic() - began < 30  # a hang guard, not a measure
    # ... and not waited for: the attempt (three tries of 3 s at a server that never
    # answers) is still going, nothing of it recorded but that it began.
    assert dispatcher.flush(0) is False
    give_up = time.monotonic() + 30  # the attempt's start is recorded by its thread: on a
    while (row := ledger.alerts()[0]).attempts == 0 and time.monotonic() < give_up:  # busy
        time.sleep(0.05)  # machine, later than the second of waiting above (ci74)
    assert (row.id, row.attempts, row.delivered, row.deliveries) == (alert.id, 1, False, {})
    dispatcher.close()  # what the exit does next: the attempt records nothing after it


class _SlowHook(BaseHTTPRequestHandler):
    delay = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("delay", [0.3, 2.0], ids=["answers in time", "answers too late"])
def test_alerts_still_going_out_at_exit_are_done_with_the_ledger_before_it_closes(
    emulator: OllamaEmulator, tmp_path: Path, delay: float
) -> None:
    """The process closed its ledgers first and waited for the alert thread after (atexit):
    the thread then wrote the delivery through a connection opened anew and never closed,
    so SQLite's write-ahead log stayed beside the file (PostgreSQL: a dropped session)."""
    handler = type("Hook", (_SlowHook,), {"delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    db = f"sqlite:///{tmp_path / 'l.db'}"
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": db,
        "OMETER_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{server.server_address[1]}/hook",
    }
    setup = [
        ["pricing", "set", "*", "--input-per-1m", "1000"],
        ["budget", "set", "sales", "--monthly", "0.000001", "--soft", "--thresholds", "100"],
    ]
    try:
        for args in setup:
            subprocess.run([*OMETER, *args], env=env, check=True, capture_output=True)
        done, _ = chat(env)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("l.db-")) == []
    (alert,) = Ledger(db).alerts()
    assert alert.attempts == 1 and alert.delivered == (delay < 1)


class _EndlessHook(BaseHTTPRequestHandler):
    """Answers 200 and then a body that never ends (a URL that serves a stream or a download)."""

    protocol_version = "HTTP/1.1"
    stop = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = b"x" * 65_536
        with contextlib.suppress(OSError):
            while not self.stop.is_set():  # paced: without the fix, memory grows slowly
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(0.01)

    def log_message(self, *_: object) -> None:
        pass


def test_a_webhook_answering_an_endless_body_neither_holds_alerts_nor_fills_memory(
    tmp_path: Path,
) -> None:
    """The body was read whole: the alert thread read for ever, every later alert behind it."""
    from ollama_meter.budgets import AlertDispatcher, WebhookChannel

    handler = type("Hook", (_EndlessHook,), {"stop": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(url)])
    try:
        for threshold in (75, 90):
            dispatcher.dispatch(fired(ledger, threshold))
        # Both tried, neither waited on the body: a body read to its end is never done.
        assert dispatcher.flush(30.0)
        assert [a.delivered for a in ledger.alerts()] == [True, True]  # it answered 200
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


def _talking_server(
    stop: threading.Event, talk: bytes, pause: float, first: bytes = b""
) -> tuple[str, int]:
    """A server that answers ``first``, then ``talk`` again and again, never ending the reply."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), conn:
            conn.sendall(first)
            while not stop.is_set():
                conn.sendall(talk)
                time.sleep(pause)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    host, port = listener.getsockname()[:2]
    return host, port


def _sent_within(channel: Any, alert: Any, seconds: float = 30) -> list[Exception]:
    """Send ``alert`` on a thread that must end (``seconds``: a hang guard, far beyond the
    channel's own bound); what the attempt raised. Unbounded, it never ends."""
    failed: list[Exception] = []

    def send() -> None:
        try:
            channel.send(alert)
        except Exception as exc:
            failed.append(exc)

    attempt = threading.Thread(target=send, daemon=True)
    attempt.start()
    attempt.join(seconds)
    assert not attempt.is_alive()
    return failed


@pytest.mark.parametrize(
    ("talk", "pause"),
    [(b"220-hello\r\n" * 100, 0.001), (b"2", 0.4)],
    ids=["endless reply", "trickled reply"],
)
def test_an_smtp_server_that_never_ends_its_reply_fails_the_attempt_in_bounded_time(
    talk: bytes, pause: float, tmp_path: Path
) -> None:
    """Each read was bounded, the session not: smtplib read a reply that never ended (each
    line well within the timeout) for ever, keeping every line, the alert thread with it."""
    from ollama_meter.budgets import EmailChannel

    stop = threading.Event()
    host, port = _talking_server(stop, talk, pause)
    channel = EmailChannel(
        host, port, sender="m@x.org", recipients=["it@x.org"], timeout=1.0, answer=1.0
    )
    try:
        failed = _sent_within(channel, fired(Ledger(f"sqlite:///{tmp_path / 'l.db'}")))
    finally:
        stop.set()
    # Cut by the session's bound (three reads' timeout and the message's answer's: 4 s here,
    # 13 s with the 10 s a message's answer is given by default) or, the endless one, by the
    # size of the reply, whichever comes first on this machine: either way the attempt failed.
    assert [type(e) for e in failed] == [smtplib.SMTPServerDisconnected]


def test_a_webhook_trickling_its_answer_fails_the_attempt_in_bounded_time(tmp_path: Path) -> None:
    """A header line every 0.4 s, each read within the timeout: the POST waited for ever."""
    from ollama_meter.budgets import WebhookChannel

    stop = threading.Event()
    host, port = _talking_server(stop, b"X-Still: here\r\n", 0.4, first=b"HTTP/1.1 200 OK\r\n")
    channel = WebhookChannel(f"http://{host}:{port}/hook", timeout=1.0, answer=1.0)
    alert = fired(Ledger(f"sqlite:///{tmp_path / 'l.db'}"))
    try:
        failed = _sent_within(channel, alert)
    finally:
        stop.set()
    said = f"http://{host}:{port} was sent the alert and did not answer within 3 s"
    assert [str(e) for e in failed] == [said]
