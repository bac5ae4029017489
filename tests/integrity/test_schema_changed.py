"""A ledger whose schema was changed by hand under ometer (a table renamed or dropped, a
column gone, its revision row deleted): every command says what is wrong and what to do,
in one line; nothing is written into the changed schema, and no span is lost."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.records import Stored
from tests.factories import make_span
from tests.integrity.test_cli_errors import one_error_line

CHANGED = "the ledger's schema was changed outside ometer"


@pytest.mark.parametrize("table", ["spans", "rollups", "ledger_meta"])
def test_a_table_renamed_by_hand_is_named_with_what_to_do_and_its_spans_wait(
    cli: Any, db_url: str, table: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's bare ``relation "spans" does not exist`` (SQLite's ``no such table``)
    said nothing of why a ledger that worked a moment ago lacks its own table, or what to do."""
    spool = tmp_path / "spool"
    ledger = Ledger(db_url, spool_dir=spool)
    ledger.record([make_span()])
    with ledger.write() as conn:
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_kept"))
    span = make_span()
    with caplog.at_level(logging.WARNING, "ollama_meter.ledger"):
        stored = ledger.record([span])
    if table != "ledger_meta":  # a write that reads no setting needs no ledger_meta
        assert stored == {span.id: Stored.SPOOLED}
        assert CHANGED in caplog.text and "spans wait in the spool" in caplog.text
    close_ledgers()
    line = one_error_line(
        cli("log", "--db", db_url)
        if table != "rollups"
        else cli("report", "--period", "month", "--db", db_url)
    )
    assert CHANGED in line and "restore it from a backup" in line, line
    # `db upgrade` said such a ledger was "up to date (revision 0016)".
    line = one_error_line(cli("db", "upgrade", "--db", db_url))
    assert CHANGED in line and "restore it from a backup" in line, line
    with ledger.write() as conn:
        conn.execute(text(f"ALTER TABLE {table}_kept RENAME TO {table}"))
    ledger.dispose()
    again = Ledger(db_url, spool_dir=spool)  # opening it records what the spool kept
    assert again.count() == 2 and again.spool.pending() == []
    again.dispose()


def _revision(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    engine.dispose()
    return found


def test_a_revision_set_back_by_hand_is_named_and_no_migration_runs_twice(
    cli: Any, db_url: str
) -> None:
    """A revision row older than the tables (edited, or restored apart from them): the
    migrations it named ran again and failed on the driver's bare ``duplicate column name:
    claimed_until``, which said neither why nor what to do."""
    Ledger(db_url).record([make_span()])
    close_ledgers()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0012'"))
    engine.dispose()
    for command in (["log"], ["db", "upgrade"]):
        line = one_error_line(cli(*command, "--db", db_url))
        assert CHANGED in line and "restore it from a backup" in line, line
    assert _revision(db_url) == ["0012"]  # the migration was rolled back whole


def test_a_ledger_whose_revision_row_is_gone_is_not_called_another_apps(
    cli: Any, db_url: str
) -> None:
    """An empty ``alembic_version`` (a partial restore, a hand edit) under ometer's own
    tables was refused as "another application's tables (api_keys, budget_alerts...)"."""
    Ledger(db_url).record([make_span()])
    close_ledgers()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    engine.dispose()
    for command in (["log"], ["db", "upgrade"], ["chat", "hello"]):
        line = one_error_line(cli(*command, "--db", db_url))
        assert "holds an ometer ledger's tables but no schema revision" in line, line
        assert "another application" not in line
    assert _revision(db_url) == []


def test_a_ledger_a_newer_ometer_changed_under_a_running_one_says_to_upgrade(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer ometer's migration that renames a column (``ometer db upgrade`` on another
    host while this gateway runs): the write that no longer finds it must say to restart
    with the newer ometer, not that someone changed the schema by hand."""
    from ollama_meter.ledger import HEAD_REVISION

    spool = tmp_path / "spool"
    ledger = Ledger(db_url, spool_dir=spool)
    ledger.record([make_span()])
    newer = f"{int(HEAD_REVISION) + 1:04d}"
    with ledger.write() as conn:
        conn.execute(text("ALTER TABLE spans RENAME COLUMN operation TO operation_name"))
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    span = make_span()
    with caplog.at_level(logging.WARNING, "ollama_meter.ledger"):
        assert ledger.record([span]) == {span.id: Stored.SPOOLED}
    assert f"a newer ometer upgraded the ledger to schema revision {newer}" in caplog.text
    assert "Restart this process with the newer ometer" in caplog.text
    assert CHANGED not in caplog.text
    ledger.dispose()
