"""A database or role setting changed back while ometer runs (``ALTER DATABASE ... SET``
applies to sessions that start after it): a pooled session opened under the old setting
must not keep failing every write until the process restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.ledger import Ledger
from ollama_meter.records import Stored
from tests.factories import make_span


def test_a_database_made_writable_again_takes_the_next_write(
    pg_server: str | None, tmp_path: Path
) -> None:
    """``default_transaction_read_only`` set on the database for a maintenance window, then
    reset: the gateway's pooled sessions, opened read-only meanwhile, kept refusing every
    write (its spans spooled, and stayed there) until it was restarted."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    url = _fresh_pg_database(pg_server)
    name = make_url(url).database
    ledger = Ledger(url, spool_dir=tmp_path / "spool")
    assert set(ledger.record([make_span()]).values()) == {Stored.COMMITTED}
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")

    def sessions_end() -> None:  # as a failover, a pooler's restart or idle timeouts do
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {name} SET default_transaction_read_only = on"))
    sessions_end()
    during = make_span()
    assert ledger.record([during]) == {during.id: Stored.SPOOLED}
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {name} RESET default_transaction_read_only"))
    admin.dispose()
    after = make_span()
    assert ledger.record([after]) == {after.id: Stored.COMMITTED}
    assert ledger.count() == 3 and ledger.spool.pending() == []  # the spooled one came in
    ledger.dispose()


def test_a_statement_timeout_raised_again_reaches_the_sessions_that_hit_it(
    pg_server: str | None, tmp_path: Path
) -> None:
    """A role's ``statement_timeout`` too short for a write (README: raise it with ALTER
    ROLE): once raised, the pooled sessions that hit it still had the old one, and the
    gateway kept spooling until it was restarted."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    url = _fresh_pg_database(pg_server)
    name = make_url(url).database
    ledger = Ledger(url, spool_dir=tmp_path / "spool")
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {name} SET statement_timeout = '1ms'"))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
    # The holder is exempt: under the database's 1 ms its own first look at the server fails.
    holder = create_engine(url, connect_args={"options": "-c statement_timeout=0"})
    with holder.connect() as held:  # the write waits: 1 ms is over on any machine
        held.execute(text("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE"))
        during = make_span()
        assert ledger.record([during]) == {during.id: Stored.SPOOLED}
        held.rollback()
    holder.dispose()
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {name} RESET statement_timeout"))
    admin.dispose()
    with ledger.read() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
    after = make_span()
    assert ledger.record([after]) == {after.id: Stored.COMMITTED}
    assert ledger.count() == 2 and ledger.spool.pending() == []
    ledger.dispose()
