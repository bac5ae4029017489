"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's ledger (SQLite, then PostgreSQL), as OMETER_DB_URL names it to ``ometer``."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    return db_url
