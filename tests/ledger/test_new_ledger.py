"""A new ledger is made at the head revision in one step, and is what the migrations make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from ollama_meter.ledger import HEAD_REVISION, Ledger, current_revision, upgrade
from ollama_meter.ledger._engine import create_ledger_engine
from ollama_meter.ledger._rebuild import build_if_stale
from ollama_meter.ledger.models import METADATA
from tests.conftest import _fresh_pg_database


def _schema(engine: Engine) -> dict[str, Any]:
    """Every table's columns, keys, indexes, constraints and rows, as the database itself
    describes them (the dialect's catalogue, not SQLAlchemy's models). Columns are compared
    by name: a migration adds one at the end on PostgreSQL and where the model has it on
    SQLite (which copies the table), and nothing reads or writes them by position."""
    seen = inspect(engine)
    tables: dict[str, Any] = {}
    with engine.connect() as conn:
        for name in sorted(seen.get_table_names()):
            columns = sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in seen.get_columns(name)
            )
            indexes = sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    str(i.get("dialect_options")),
                )
                for i in seen.get_indexes(name)
            )
            foreign = sorted(
                (f["referred_table"], tuple(f["constrained_columns"]), tuple(f["referred_columns"]))
                for f in seen.get_foreign_keys(name)
            )
            checks = sorted(c["sqltext"] for c in seen.get_check_constraints(name))
            uniques = sorted(tuple(u["column_names"]) for u in seen.get_unique_constraints(name))
            key = seen.get_pk_constraint(name)["constrained_columns"]
            rows = sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{name}"'))))
            tables[name] = (columns, key, indexes, foreign, checks, uniques, rows)
        if engine.dialect.name == "sqlite":  # a rollup table is its key: no rowid beside it
            tables["without rowid"] = sorted(
                name
                for name, sql in conn.execute(text("SELECT name, sql FROM sqlite_master"))
                if sql and "WITHOUT ROWID" in sql.upper()
            )
    return tables


def _second_url(db_url: str, tmp_path: Path, pg_server: str | None) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'migrated.db'}"
    assert pg_server is not None
    return _fresh_pg_database(pg_server)


def test_a_new_ledger_is_made_at_head_exactly_as_every_migration_in_turn_makes_it(
    db_url: str, tmp_path: Path, pg_server: str | None
) -> None:
    made = Ledger(db_url)
    migrated = Ledger(_second_url(db_url, tmp_path, pg_server), migrate=False)
    upgrade(migrated.engine)  # the long way: 0001 to the head, one migration after another
    build_if_stale(migrated)
    assert current_revision(made.engine) == current_revision(migrated.engine) == HEAD_REVISION
    old = _schema(migrated.engine)
    if db_url.startswith("sqlite"):  # 0011 could not drop the default it backfilled with
        busy = old["rollup_busy"][0]
        busy[busy.index(("calls", "BIGINT", False, "'1'"))] = ("calls", "BIGINT", False, "None")
    assert _schema(made.engine) == old
    assert set(inspect(made.engine).get_table_names()) == {*METADATA.tables, "alembic_version"}


def test_a_database_that_holds_anything_is_not_made_a_ledger_over_it(sqlite_url: str) -> None:
    engine = create_ledger_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    with pytest.raises(Exception, match="not an ometer ledger"):
        Ledger(sqlite_url)
    assert inspect(engine).get_table_names() == ["invoices"]  # nothing was added beside it
