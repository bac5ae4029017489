"""A gateway's span of a call its client gave up on, committed late: still the call's one record.

An ometer client on the gateway's ledger whose own time ran out looks in the ledger for the
gateway's span of the call (the gateway records it, its caller gone) before it writes one of
its own. That look lasted a second of the clock: a ledger another writer kept locked longer
held the gateway's commit past it, and the client wrote its copy: one call, two spans.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

from ollama_meter import MeteredClient
from ollama_meter.errors import UpstreamTimeout
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]


def _locked_for(url: str, seconds: float, taken: threading.Event) -> None:
    """Another writer holds the ledger's lock for ``seconds``: SQLite's write lock, or on
    PostgreSQL the spans table against writes (reads go on)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.isolation_level = None
                raw.execute("BEGIN IMMEDIATE")
            else:
                conn.execute(text("LOCK TABLE spans IN EXCLUSIVE MODE"))
            taken.set()
            time.sleep(seconds)
            if url.startswith("sqlite"):
                raw.execute("ROLLBACK")
            else:
                conn.rollback()
    finally:
        engine.dispose()


def test_a_gateways_abort_committed_after_a_long_lock_is_the_one_record(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, db_url)
    taken = threading.Event()
    emulator.latency = 3.0  # past the client's timeout
    try:
        with MeteredClient(
            gw.url, department="sales", db_url=db_url, upstream_timeout=0.4, retries=0
        ) as client:
            holder = threading.Thread(target=_locked_for, args=(db_url, 1.8, taken))

            def lock_once_sent() -> None:
                deadline = time.monotonic() + 10
                while emulator.in_flight < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                holder.start()

            starter = threading.Thread(target=lock_once_sent)
            starter.start()
            with pytest.raises(UpstreamTimeout):
                client.chat("llama3.1:8b", HI)
            starter.join()
            holder.join()
            assert taken.is_set()
    finally:
        emulator.latency = 0.0
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.department, s.status) for s in spans] == [
        ("gateway", "sales", "client_abort")
    ]
