"""Fixtures of the reports' tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter.ledger import _aggregate
from tests.conftest import _MADE, _fresh_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def new_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_server: str | None
) -> Callable[[], str]:
    """A maker of empty ledgers, one per generated example, on each backend."""
    if request.param == "postgres" and pg_server is None:
        pytest.skip("no PostgreSQL server available")

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        assert pg_server is not None
        url = _fresh_pg_database(pg_server)
        _MADE.append((pg_server, url.rsplit("/", 1)[1]))  # dropped when the test ends
        return url

    return make


@pytest.fixture
def sums_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, ...], int]]:
    """Each spend read the ledger answers: its group columns and how many rows it gave."""
    reads: list[tuple[tuple[str, ...], int]] = []
    original = _aggregate.aggregate_spend

    def counted(conn: Any, where: Any, by: Any, buckets: Any = (), **kw: Any) -> Any:
        rows = original(conn, where, by, buckets, **kw)
        reads.append(((*by, *(["bucket"] if buckets else [])), len(rows)))
        return rows

    monkeypatch.setattr(_aggregate, "aggregate_spend", counted)
    return reads
