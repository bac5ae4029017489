"""A ledger a newer ometer upgrades while this one runs: spans wait in the spool for it.

A gateway of this version keeps running while ``ometer db upgrade`` of a newer version
changes the schema under it (a rolling upgrade of several gateways on one PostgreSQL
ledger). Its inserts then fail on the new schema; that is not a span the database refuses
for what it holds, so the spans must not go to the quarantine, out of every drain.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from ollama_meter.ledger import HEAD_REVISION, Ledger, SpanFilter
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
