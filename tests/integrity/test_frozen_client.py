"""An ometer process that stops dead inside a write transaction (``kill -STOP``, a paused VM,
a host lost mid-commit): the server sees a session idle in its transaction, holding the row
locks of the rollups every write adds to. Without a bound of ometer's own, every other
process's writes spooled for as long as it stayed stopped (a lost host: until the server's
TCP keepalive, two hours by default)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Stored
from tests.factories import make_span

HANG = 60.0
"""Seconds after which the stopped session is taken to be held for good."""

_STOP_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from sqlalchemy import text
from ollama_meter.ledger import Ledger, _spans
from tests.factories import make_span
ledger = Ledger(sys.argv[1], spool_dir=Path(sys.argv[2]), wait=float(sys.argv[3]))
with ledger.write() as conn:
    _spans.insert_spans(conn, [make_span()])  # the rollup rows every span adds to: locked
    print(conn.execute(text("SELECT pg_backend_pid()")).scalar(), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.fixture
def url(pg_server: str | None) -> str:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    made = _fresh_pg_database(pg_server)
    Ledger(made).dispose()
    return made


@pytest.fixture
def stopped_writer(url: str, tmp_path: Path) -> Iterator[int]:
    """A process stopped inside its write transaction; yields its server backend's pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", _STOP_MID_WRITE, url, str(tmp_path / "its-spool"), "1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def _session_alive(url: str, backend: int) -> bool:
    admin = create_engine(make_url(url).set(database="postgres"))
    with admin.connect() as conn:
        alive = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}
        ).scalar()
    admin.dispose()
    return bool(alive)


def test_a_writer_stopped_mid_transaction_blocks_the_others_only_for_a_while(
    url: str, stopped_writer: int, tmp_path: Path
) -> None:
    ledger = Ledger(url, wait=1, spool_dir=tmp_path / "spool")
    first, second = make_span(), make_span()
    assert ledger.record([first]) == {first.id: Stored.SPOOLED}  # its locks are in the way
    deadline = time.monotonic() + HANG
    while _session_alive(url, stopped_writer):
        assert time.monotonic() < deadline, "the stopped writer's transaction is held for good"
        time.sleep(0.1)
    assert ledger.record([second]) == {second.id: Stored.COMMITTED}
    assert ledger.spool.pending() == []
    assert sorted(s.id for s in ledger.latest(SpanFilter(), 10)) == sorted([first.id, second.id])
    (total,) = ledger.spend(SpanFilter())
    assert total.requests == 2
    ledger.dispose()


def test_upkeep_over_many_spans_may_idle_in_its_transaction(url: str, tmp_path: Path) -> None:
    """A rebuild computes a day between its statements, an export waits on whoever reads
    it: their transactions may rightly sit idle, so the bound is lifted for them alone."""
    from ollama_meter.ledger import unbounded

    ledger = Ledger(url, wait=0.5, spool_dir=tmp_path / "spool")
    show = text("SHOW idle_in_transaction_session_timeout")
    with ledger.read() as conn:  # a read holds no row lock: a minute (test_pg_terminated)
        assert conn.execute(show).scalar() == "1min"
    with unbounded(), ledger.read() as conn:
        assert conn.execute(show).scalar() == "0"
    with ledger.write() as conn:  # the same pooled session, its own bound again
        assert conn.execute(show).scalar() == "5s"
    ledger.dispose()


def test_a_lock_held_past_the_wait_is_named_and_the_server_still_asked(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server answers a lock wait itself (``lock_timeout``), before ometer's deadline on
    its answer: with both at OMETER_LEDGER_WAIT, the deadline won, the spans' line said the
    server "did not answer", and the healthy server was not asked again for as long (the
    next write spooled at once, a hard budget was refused)."""
    ledger = Ledger(url, wait=1, spool_dir=tmp_path / "spool")
    first, second = make_span(), make_span()
    holder = create_engine(url)
    with holder.connect() as conn, caplog.at_level(logging.WARNING, "ollama_meter.ledger"):
        conn.execute(text("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE"))
        assert ledger.record([first]) == {first.id: Stored.SPOOLED}
        conn.rollback()
    holder.dispose()
    [said] = [r.getMessage() for r in caplog.records if "kept them in" in r.getMessage()]
    assert "canceling statement due to lock timeout: another process held it" in said
    assert "did not answer" not in said
    assert ledger.record([second]) == {second.id: Stored.COMMITTED}  # at once: no quiet second
    assert ledger.spool.pending() == []
    assert ledger.count() == 2
    ledger.dispose()
