"""A ledger a newer ometer upgrades while this one runs: spans wait in the spool for it.

A gateway of this version keeps running while ``ometer db upgrade`` of a newer version
changes the schema under it (a rolling upgrade of several gateways on one PostgreSQL
ledger). Its inserts then fail on the new schema; that is not a span the database refuses
for what it holds, so the spans must not go to the quarantine, out of every drain.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import HEAD_REVISION, Ledger, SpanFilter, current_revision, upgrade
from ollama_meter.ledger._engine import create_ledger_engine
from ollama_meter.ledger._migrate import PG_MIGRATION_LOCK
from ollama_meter.records import Stored
from tests.factories import make_span


def _newer_ometer_upgrades(ledger: Ledger) -> str:
    """What a newer ometer's next migration may do: a column every insert must fill."""
    newer = f"{int(HEAD_REVISION) + 1:04d}"
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE spans ADD COLUMN gpu_id INTEGER NOT NULL DEFAULT 0"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE spans ALTER COLUMN gpu_id DROP DEFAULT"))
        else:  # SQLite cannot drop a default: a CHECK every old insert fails the same way
            conn.execute(text("CREATE TRIGGER need_gpu BEFORE INSERT ON spans BEGIN "
                              "SELECT RAISE(ABORT, 'NOT NULL constraint failed: spans.gpu_id'); END"))  # fmt: skip
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    return newer


def test_spans_written_after_a_newer_ometer_upgraded_the_ledger_wait_in_the_spool(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ledger = Ledger(db_url, spool_dir=spool)
    ledger.record([make_span()])
    newer = _newer_ometer_upgrades(ledger)
    spans = [make_span(), make_span()]
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        stored = ledger.record(spans)
    assert set(stored.values()) == {Stored.SPOOLED}
    assert not ledger.spool.quarantined() and len(ledger.spool.pending()) == 1
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"schema revision {newer}" in said and "newer ometer" in said, said
    assert ledger.count(SpanFilter()) == 1


def test_a_process_opening_a_ledger_another_migrates_waits_for_it_and_says_so(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Four gateways started together after an upgrade, on a SQLite ledger of 200,000 spans:
    the first migrated it (36 s), the other three exited after OMETER_LEDGER_WAIT with
    "database is locked". Whoever holds the schema lock of a ledger behind this ometer's,
    the others wait for it, and say so once."""
    engine = create_ledger_engine(db_url)
    upgrade(engine, "0005")
    engine.dispose()
    holder = create_engine(db_url, isolation_level="AUTOCOMMIT").connect()
    if holder.dialect.name == "postgresql":  # as a migration holds it, for as long
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_MIGRATION_LOCK})
    else:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    waiting = threading.Event()
    opened: list[object] = []

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for another process to migrate the ledger" in record.getMessage():
                waiting.set()

    said = Said()
    logging.getLogger("ollama_meter.ledger").addHandler(said)
    opening = threading.Thread(target=lambda: opened.append(_opened(db_url)))
    opening.start()
    try:
        while not waiting.wait(0.05):
            assert opening.is_alive(), opened  # it gave up, where it should wait
    finally:
        if holder.dialect.name == "postgresql":
            holder.execute(text("SELECT pg_advisory_unlock_all()"))
        else:
            holder.exec_driver_sql("ROLLBACK")
        holder.close()
        opening.join(60)
        logging.getLogger("ollama_meter.ledger").removeHandler(said)
    assert opened == [HEAD_REVISION]


def _opened(url: str) -> object:
    try:
        ledger = Ledger(url, wait=0.2)
    except LedgerError as exc:
        return exc
    return current_revision(ledger.engine)


def _newer_revision_only(conn: Any) -> str:
    """What a newer ometer's migration may do that no insert of this one notices: change what
    the rollups hold (as 0012 did), or add a column it fills itself."""
    newer = f"{int(HEAD_REVISION) + 1:04d}"
    conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    return newer


def test_spans_written_after_a_newer_ometer_migrated_the_ledger_wait_even_when_they_fit(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer migration that leaves this version's inserts working (one that changes what
    the rollups hold, and rebuilds them): this gateway went on writing spans and rollups as
    it knew them, so the new rollups missed every call it made from then on (as a 0011
    gateway did beside a ledger upgraded past 0012). It writes a ledger of its own revision
    only; the spans wait in the spool for the newer ometer."""
    spool = tmp_path / "spool"
    ledger = Ledger(db_url, spool_dir=spool)
    ledger.record([make_span()])
    with ledger.engine.begin() as conn:
        newer = _newer_revision_only(conn)
    spans = [make_span(), make_span()]
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        assert set(ledger.record(spans).values()) == {Stored.SPOOLED}
    assert not ledger.spool.quarantined() and len(ledger.spool.pending()) == 1
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"schema revision {newer}" in said and "newer ometer" in said, said
    assert ledger.count(SpanFilter()) == 1


def test_a_write_begun_while_a_newer_ometer_migrates_waits_for_it_and_then_spools(
    db_url: str, tmp_path: Path
) -> None:
    """The migration commits while the write waits for it: the write must see the revision
    the migration left, not the one it read before."""
    ledger = Ledger(db_url, spool_dir=tmp_path / "spool", wait=30)
    ledger.record([make_span()])
    holder = create_engine(db_url).connect()
    if holder.dialect.name == "postgresql":  # as a migration takes it, first
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
    else:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    _newer_revision_only(holder)
    stored: list[dict[str, Stored]] = []
    writing = threading.Thread(target=lambda: stored.append(ledger.record([make_span()])))
    writing.start()
    writing.join(1.0)  # it waits for the migration (no timing asserted: it may not have begun)
    holder.commit()
    holder.close()
    writing.join(60)
    assert [set(s.values()) for s in stored] == [{Stored.SPOOLED}]
    assert ledger.count(SpanFilter()) == 1
