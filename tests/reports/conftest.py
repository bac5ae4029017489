"""Fixtures of the reports' tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, _aggregate
from tests._templates import LedgerTemplates
from tests.conftest import _MADE, _fresh_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def new_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: str | None,
    templates: LedgerTemplates,
) -> Callable[[], str]:
    """A maker of empty ledgers, one per generated example, on each backend: copies of one
    ``Ledger(url)`` made on nothing (no zone, no id yet: the test's ``Ledger(url, zone=...)``
    adopts its zone as on a new one). Made anew, each took 13.6 ms of CPU on SQLite under
    coverage (a copy: 3.2 ms), and a database and its schema on PostgreSQL 95 ms (a copy of
    the template: 50 ms)."""
    if request.param == "postgres" and pg_server is None:
        pytest.skip("no PostgreSQL server available")

    def make() -> str:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        else:
            assert pg_server is not None
            url = _fresh_pg_database(pg_server)
            _MADE.append((pg_server, url.rsplit("/", 1)[1]))  # dropped when the test ends
        templates.copy(url, "empty", Ledger)
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
