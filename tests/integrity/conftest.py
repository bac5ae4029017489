"""Fixtures of the PostgreSQL integrity tests: a fresh database, another session on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection


@pytest.fixture
def pg_url(pg_server: str | None) -> str:
    """A fresh database on the server, dropped after the test."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _MADE, _fresh_pg_database

    made = _fresh_pg_database(pg_server)
    _MADE.append((pg_server, made.rsplit("/", 1)[1]))
    return made


@pytest.fixture
def holder(pg_url: str) -> Iterator[Connection]:
    """Another session on the ledger's database, in a transaction the test ends."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        yield conn
        conn.rollback()
    engine.dispose()
