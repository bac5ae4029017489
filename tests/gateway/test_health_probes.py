"""``/healthz`` answers a load balancer in time, and a flood of probes costs one check.

It is open to anyone. Each probe read the ledger in one of the gateway's ledger threads
(64, shared with every call's span) and asked Ollama for its version: while another
writer held the ledger, each probe held a thread for OMETER_LEDGER_WAIT and answered
after it, past any load balancer's timeout, and probes coming faster than that took the
threads the calls' spans are written in.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import httpx
import pytest

from ollama_meter.gateway._health import HEALTH_WAIT
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

PROBES = 4


@pytest.fixture
def held(sqlite_url: str) -> Iterator[Callable[[], None]]:
    """``hold()`` takes the ledger file as another process would to rewrite it (SQLite's
    exclusive locking mode: no reader gets in); released when the test ends."""
    holder: list[sqlite3.Connection] = []

    def hold() -> None:
        conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE ledger_meta SET value = value WHERE 0")
        holder.append(conn)

    yield hold
    for conn in holder:
        conn.close()


def probes(gateway: Gateway, count: int) -> list[httpx.Response]:
    """``count`` probes at once, as several load balancers (or anyone) send them."""
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(gateway.client.get("/healthz")))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def threads_in(function: Callable[..., object]) -> int:
    """How many threads are running ``function`` now."""
    code = function.__code__
    found = 0
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        found += frame is not None
    return found


def test_probes_while_the_ledger_is_held_answer_in_time_and_share_one_read(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    held: Callable[[], None],
) -> None:
    gateway = app_on(emulator.url, sqlite_url, config={"ledger_wait": 60})
    assert gateway.client.get("/healthz").json()["ledger"] == "ok"
    ledger = gateway.meter.ledger
    ledger.engine.dispose()  # no pooled connection of the gateway's keeps the file open
    held()
    answers = probes(gateway, PROBES)
    reading = threads_in(type(ledger).zone)  # still waiting for the file, as the probes end
    # Each answered once the check had had HEALTH_WAIT, not the ledger's 60 s, and says so.
    assert len(answers) == PROBES
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["ledger"] == (
            f"failed: no answer within {HEALTH_WAIT:g} s (another process holds the ledger, "
            "or its server is slow)"
        )
        assert answer.json()["upstream"] == "ok"
    assert reading == 1  # the probes shared one read: one ledger thread, not four


def test_probes_of_an_upstream_that_never_answers_answer_in_time(
    app_on: Callable[..., Gateway], sqlite_url: str
) -> None:
    """A server that takes the connection and says nothing (a hung Ollama) is 503 by the
    probe's wait (Ollama's own check waited 3 s more)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def take() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    taker = threading.Thread(target=take)
    taker.start()
    try:
        host, port = silent.getsockname()
        gateway = app_on(f"http://{host}:{port}", sqlite_url)
        answers = probes(gateway, PROBES)
    finally:
        stop.set()
        taker.join()
        for conn in accepted:
            conn.close()
        silent.close()
    assert len(answers) == PROBES
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "degraded",
            "ledger": "ok",
            "upstream": f"unreachable: no answer within {HEALTH_WAIT:g} s",
        }
