"""A PostgreSQL server with one connection left for an ``ometer`` command (the rest taken
by gateways, other tools, a connection pooler's limit): the command does its work with it.

``budget status`` (and the dashboard's budget gauges) read the budgets on a second
connection while the first held the snapshot of their spend: with one connection to
spare it failed, "sorry, too many clients already", while ``report`` passed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import Pool

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger
from tests._pg import PgCluster
from tests.factories import make_span, token_prices

NOW = datetime.now(UTC).replace(microsecond=0)
LIMIT = 4
"""The server's max_connections in these tests (none reserved for superusers)."""


@pytest.fixture
def one_left(cluster: PgCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ledger with a budget and spans, on a server whose every connection but one is taken."""
    admin = create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER SYSTEM SET max_connections = {LIMIT}"))
        conn.execute(text("ALTER SYSTEM SET superuser_reserved_connections = 0"))
    admin.dispose()
    cluster.stop()
    cluster.start()
    url = f"{cluster.url}/postgres"
    setup = Ledger(url)
    setup.add_price_rule(token_prices())
    setup.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    setup.record(
        [make_span(tenant="acme", department="sales", cost_total=7_000_000, started_at=NOW)]
    )
    setup.dispose()
    monkeypatch.setenv("OMETER_DB_URL", url)
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    others = create_engine(url, pool_size=LIMIT)
    taken = [others.connect() for _ in range(LIMIT - 1)]
    yield url
    for conn in taken:
        conn.close()
    others.dispose()


def test_budget_status_reads_the_spend_with_one_connection(cli: Any, one_left: str) -> None:
    import json

    result = cli("budget", "status", "--json")
    assert result.code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["tenant"], row["department"], row["spent"]) == ("acme", "sales", "7.000000")


def test_no_thread_holds_two_ledger_connections_at_once(
    cli: Any, one_left: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The class, not the one command: a thread that holds a connection and asks for another
    fails on a full server, and in a pool whose every connection such a thread holds, they
    all wait for each other until the pool's timeout."""
    held: dict[int, int] = {}
    twice: list[int] = []

    def taken(*_: object) -> None:
        me = threading.get_ident()
        held[me] = held.get(me, 0) + 1
        if held[me] > 1:
            twice.append(me)

    def given_back(*_: object) -> None:
        held[threading.get_ident()] -= 1

    event.listen(Pool, "checkout", taken)
    event.listen(Pool, "checkin", given_back)
    try:
        for command in (
            ["budget", "status"],
            ["budget", "list"],
            ["report", "--period", "month"],
            ["perf"],
            ["chargeback", "--month", "2026-11", "--out", "bill.csv"],
        ):
            result = cli(*command)
            assert result.code == 0, (command, result.stderr)
    finally:
        event.remove(Pool, "checkout", taken)
        event.remove(Pool, "checkin", given_back)
    assert twice == []
