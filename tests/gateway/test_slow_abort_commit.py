"""A gateway's span of a call its client gave up on, committed late: still the call's one record.

An ometer client on the gateway's ledger whose own time ran out looks in the ledger for the
gateway's span of the call (the gateway records it, its caller gone) before it writes one of
its own. That look lasted a second of the clock: a ledger another writer kept locked longer
held the gateway's commit past it, and the client wrote its copy: one call, two spans.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ollama_meter import MeteredClient
from ollama_meter.errors import UpstreamTimeout
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import Journal
from ollama_meter.meter import _elsewhere, utc_now
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway
from tests.gateway.test_chain_hangups import _hang_up_once_sent
from tests.integrity.test_journal_lines import _no_prices

HI = [{"role": "user", "content": "hi"}]
MODEL = "llama3.1:8b"


def _locked_for(url: str, seconds: float, taken: threading.Event, rows: bool = False) -> None:
    """Another writer holds the ledger's lock for ``seconds``: SQLite's write lock, or on
    PostgreSQL the spans table against writes (reads go on), or (``rows``) every rollup row,
    as a long transaction writing them (an import, a reprice) does."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.isolation_level = None
                raw.execute("BEGIN IMMEDIATE")
            elif rows:
                assert conn.execute(text("UPDATE rollups SET grain = grain")).rowcount > 0
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


@pytest.mark.parametrize("waits", ["5 s", "the ledger's wait"])
def test_a_gateways_abort_committed_after_a_long_lock_is_the_one_record(
    emulator: OllamaEmulator,
    db_url: str,
    serve_on: Callable[..., Gateway],
    monkeypatch: pytest.MonkeyPatch,
    waits: str,
) -> None:
    """On PostgreSQL the rollup rows a first call of the department made are locked, which the
    abort's commit writes to as well. ``the ledger's wait``: the client looked at most 5 s
    more while writes waited, whatever OMETER_LEDGER_WAIT said: a gateway waiting 10 s for the
    lock committed its abort past the look. It looks as long as its own ledger's writes wait;
    here the fixed 5 s are made 0.3 s, as a wait of 10 s makes them short."""
    if waits != "5 s":
        monkeypatch.setattr(_elsewhere, "BEHIND_LOCKED", 0.3)
    gw = serve_on(emulator.url, db_url)
    first = {"model": MODEL, "messages": HI, "stream": False}
    sales = {"X-Ometer-Department": "sales"}
    assert gw.client.post("/api/chat", json=first, headers=sales).status_code == 200
    gw.settle()
    taken = threading.Event()
    emulator.latency = 3.0  # past the client's timeout
    try:
        with MeteredClient(
            gw.url, department="sales", db_url=db_url, upstream_timeout=0.4, retries=0
        ) as client:
            holder = threading.Thread(target=_locked_for, args=(db_url, 1.8, taken, True))

            def lock_once_sent() -> None:
                deadline = time.monotonic() + 10
                while emulator.in_flight < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                holder.start()

            starter = threading.Thread(target=lock_once_sent)
            starter.start()
            with pytest.raises(UpstreamTimeout):
                client.chat(MODEL, HI)
            starter.join()
            holder.join()
            assert taken.is_set()
    finally:
        emulator.latency = 0.0
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.status) for s in spans] == [("gateway", "client_abort"), ("gateway", "ok")]


def test_a_dead_clients_call_recorded_by_a_gateway_behind_a_lock_is_not_recovered_again(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway], tmp_path: Path
) -> None:
    """An ometer client killed with its call open in its journal; the gateway records the call
    (its caller gone) behind another writer's lock, and the next process on the ledger starts
    meanwhile: it looked for the gateway's span before its own write (which waited out the
    same lock), found none yet, and recorded the call again as interrupted."""
    gw = serve_on(emulator.url, db_url)
    writer = Journal(tmp_path / "journals")
    client = make_span(
        source="sdk",
        tenant="default",
        department="sales",
        request_model="llama3.1:8b",
        started_at=utc_now(),
    )
    writer.opened(client, 3)
    ledger = Ledger(db_url)
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(writer._path, ledger.journal.directory / "9-dead.journal")  # nobody holds it
    writer.close()
    said = {"X-Ometer-Client-Span": client.id, "X-Ometer-Department": "sales"}
    taken = threading.Event()
    emulator.latency = 3.0
    try:
        sender = threading.Thread(target=_hang_up_once_sent, args=(gw.url, said, 0.3))
        sender.start()
        time.sleep(0.15)  # the gateway has the call
        holder = threading.Thread(target=_locked_for, args=(db_url, 1.8, taken))
        holder.start()
        sender.join()
        time.sleep(0.3)  # the gateway's abort waits for the lock
        assert taken.is_set()
        recover_interrupted(ledger, _no_prices)
        holder.join()
    finally:
        emulator.latency = 0.0
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.status, s.tags) for s in spans] == [
        ("gateway", "client_abort", {"ometer.client_span": client.id})
    ]
