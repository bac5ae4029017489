"""A database that is not an ometer ledger is refused in one line and left exactly as it was.

``--db`` or ``OMETER_DB_URL`` pointed at another application's database (a typo, the wrong
file in a folder, a shared PostgreSQL database) must never be turned into a ledger: the
migrations would add a dozen tables beside the other app's, and on SQLite switch the file
to WAL, which the other app may not expect.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from ollama_meter.ledger._migrate import HEAD_REVISION
from tests.integrity.test_cli_errors import one_error_line


def _other_app(url: str, revision: str | None, table: str = "notes") -> None:
    """Make the database at ``url`` another app's: a table with a row, and maybe its
    own Alembic revision (many apps use Alembic; some number revisions as ometer does)."""
    statements = [f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT)"]
    statements.append(f"INSERT INTO {table} VALUES (1, 'keep me')")
    if revision is not None:
        statements.append("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        statements.append(f"INSERT INTO alembic_version VALUES ('{revision}')")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":  # as the other app made it: no WAL
        assert parsed.database is not None
        with sqlite3.connect(parsed.database) as conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _state(url: str, table: str = "notes") -> object:
    """Everything a test can see of the database: the SQLite file's bytes, the server's tables."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        path = Path(parsed.database)
        return path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(inspect(conn).get_table_names()), conn.execute(
                text(f"SELECT body FROM {table}")
            ).all()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("table", "revision"),
    [
        *(("notes", r) for r in (None, "ae1027a6acf", "0003", f"{int(HEAD_REVISION) + 1:04d}")),
        # A tracing app's own "spans" (ometer's table name is no one's alone): it was taken
        # for a ledger far enough that the file was switched to WAL before the refusal.
        ("spans", None),
        ("spans", "ae1027a6acf"),
    ],
)  # none, another app's, one of ours, one above ours: never a table of ours
def test_another_apps_database_is_refused_and_left_as_it_was(
    cli: Any, db_url: str, table: str, revision: str | None
) -> None:
    _other_app(db_url, revision, table)
    before = _state(db_url, table)
    for command in (["log"], ["report"], ["db", "upgrade"]):
        result = cli(*command, "--db", db_url)
        line = one_error_line(result)
        assert result.code == 1, line
        assert "is not an ometer ledger" in line and table in line, line
        assert "newer" not in line, line  # another app's revision is not a newer ometer's
    assert _state(db_url, table) == before


@settings(max_examples=60, deadline=None)
@given(content=st.binary(min_size=1, max_size=1024).filter(lambda b: not b.startswith(b"SQLite")))
def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_was(content: bytes) -> None:
    """Any file that is not SQLite's, as ``--db``: a one-byte one (``echo > ledger.db`` makes
    one) SQLite takes for an empty database, and it was made a ledger over its bytes."""
    from ollama_meter.errors import LedgerError
    from ollama_meter.ledger import Ledger

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ledger.db"
        path.write_bytes(content)
        with pytest.raises(LedgerError, match="is not a database") as refused:
            Ledger(f"sqlite:///{path}", spool_dir=Path(folder) / "spool")
        assert "move it aside" in str(refused.value)
        assert path.read_bytes() == content
        assert sorted(p.name for p in Path(folder).iterdir()) == ["ledger.db"]
