"""A PostgreSQL server or role set up otherwise than the ledger assumes: its own time zone,
search path and isolation level. The ledger's answers and writes must not depend on them."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import Stored
from ollama_meter.reports import chargeback, spend_report
from tests.ledger.test_transfer import BERLIN, NOW, _spans

HOSTILE_SETTINGS = (
    "default_transaction_isolation = 'serializable'",
    "timezone = 'America/St_Johns'",
    "search_path = 'ledger'",
)


@pytest.fixture
def hostile_pg(pg_server: str | None) -> Iterator[str]:
    """A database owned by a role whose sessions are serializable, in St John's, on schema ``ledger``."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"CREATE DATABASE {role} OWNER {role}"))
        for setting in HOSTILE_SETTINGS:
            conn.execute(text(f"ALTER ROLE {role} SET {setting}"))
    url = make_url(f"{pg_server}/{role}").set(username=role).render_as_string(False)
    owner = create_engine(url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text("CREATE SCHEMA ledger"))
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
    owner.dispose()
    yield url
    admin.dispose()


def _write_all_committed(url: str, worker: int) -> None:
    ledger = Ledger(url)
    mine = _spans(200)[worker * 40 : worker * 40 + 80]  # each overlaps its neighbour by 40
    for start in range(0, len(mine), 5):
        stored = ledger.record(mine[start : start + 5])
        if set(stored.values()) != {Stored.COMMITTED}:
            raise SystemExit(f"worker {worker}: {stored}")
    ledger.dispose()


@pytest.mark.slow
def test_a_serializable_role_elsewhere_in_time_and_schema_changes_nothing(hostile_pg: str) -> None:
    Ledger(hostile_pg).dispose()  # migrated before the race
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_all_committed, args=(hostile_pg, n)) for n in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    # Serializable sessions failed each other's rollup upserts: spans went to the spool.
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    ledger = Ledger(hostile_pg)
    assert ledger.count() == 200
    with ledger.read() as conn:
        assert conn.execute(text("SELECT to_regclass('ledger.spans')")).scalar() is not None
    for month in ("2026-10", "2026-11", "2026-12"):
        window = parse_period(month, tz=BERLIN, now=NOW)
        by = ["tenant", "department", "user", "model", "day"]
        report = spend_report(ledger, window, by, tz=BERLIN).rows
        bill = chargeback(ledger, month, tz=BERLIN, now=NOW, currency="USD", fixed_cost=Decimal(9))
        with raw_spans():
            assert report == spend_report(ledger, window, by, tz=BERLIN).rows
            raw = chargeback(
                ledger, month, tz=BERLIN, now=NOW, currency="USD", fixed_cost=Decimal(9)
            )
        assert (bill.rows, bill.busy_ns) == (raw.rows, raw.busy_ns)
    ledger.dispose()


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("SET statement_timeout = '1ms'", "raise it (ALTER ROLE ... SET statement_timeout"),
        ("CONNECTION LIMIT 0", "at its connection limit (max_connections, or the user's"),
    ],
)
def test_a_role_the_server_limits_is_told_what_to_change(
    cli: Any,
    pg_server: str,
    hostile_pg: str,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    says: str,
) -> None:
    Ledger(hostile_pg).dispose()
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER ROLE {make_url(hostile_pg).username} {setting}"))
    admin.dispose()
    monkeypatch.setenv("OMETER_DB_URL", hostile_pg)
    with _tables_held(pg_server, hostile_pg):  # a statement waits: 1 ms is over on any machine
        result = cli("report", "--period", "2026-11")
        assert result.code == 1 and says in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        with pytest.raises(LedgerError, match="connection limit|statement_timeout"):
            Ledger(hostile_pg)


@contextmanager
def _tables_held(server: str, url: str) -> Iterator[None]:
    """Every table of the ledger's database locked by another session until the block ends
    (as a long migration or ``VACUUM FULL`` would), so the ledger's first statement waits."""
    holder = create_engine(f"{server}/{make_url(url).database}")
    with holder.connect() as conn:
        names = conn.execute(
            text(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
        ).scalars()
        conn.execute(text(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()
    holder.dispose()


def test_a_urls_own_session_options_are_kept_beside_ometers(pg_server: str | None) -> None:
    """``?options=-csearch_path=meter`` is how a URL puts a ledger in a schema of its own.
    ometer's ``lock_timeout`` went to the driver as ``options`` too, and replaced the URL's:
    the tables landed in ``public``, and the URL's settings were silently dropped."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    database = _fresh_pg_database(pg_server)
    owner = create_engine(database, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text("CREATE SCHEMA meter"))
    owner.dispose()
    url = f"{database}?options=-csearch_path%3Dmeter%20-c%20application_name%3Dbilling"
    ledger = Ledger(url, wait=0.5)
    ledger.record(_spans(3))
    with ledger.read() as conn:
        settings = "current_schema(), current_setting('application_name'), "
        assert conn.execute(text(f"SELECT {settings} current_setting('lock_timeout')")).one() == (
            "meter",
            "billing",
            "400ms",  # a little under the wait: see lock_seconds
        )
        tables = "to_regclass('meter.spans') IS NOT NULL, to_regclass('public.spans') IS NULL"
        assert conn.execute(text(f"SELECT {tables}")).one() == (True, True)
        assert conn.execute(text("SELECT count(*) FROM meter.spans")).scalar() == 3
    ledger.dispose()


SCHEMA = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)


@given(
    schema=SCHEMA,
    other=SCHEMA,
    spelling=st.sampled_from(["-csearch_path=", "-c search_path=", "--search-path="]),
)
def test_ledgers_in_two_schemas_of_one_database_spool_apart(
    schema: str, other: str, spelling: str
) -> None:
    """Two ledgers in one database, told apart by the URL's search path, shared one spool
    folder: a process opening one recorded the other's spooled spans into it. The rest of
    ``options`` (a timeout, an application name) is what gets changed after an outage, so
    it names no folder of its own."""
    from urllib.parse import quote

    from ollama_meter.ledger._durable import default_spool_dir

    base = "postgresql+psycopg://meter@db.internal:5432/ometer"
    folder = default_spool_dir(f"{base}?options={quote(f'-csearch_path={schema}')}")
    written = quote(f"-c statement_timeout=0 {spelling}{schema} -capplication_name=x")
    assert default_spool_dir(f"{base}?options={written}") == folder
    assert (default_spool_dir(f"{base}?options={quote(f'--search_path={other}')}") == folder) == (
        other == schema
    )
    assert default_spool_dir(base) != folder
    assert default_spool_dir(f"{base}?options={quote('-c statement_timeout=0')}") == (
        default_spool_dir(base)
    )


MIGRATION_LOCK = 0x6F6D6574
"""The advisory lock every ometer process takes to migrate (``migrations/env.py``)."""


def test_a_migration_held_past_the_wait_says_what_to_do(
    cli: Any, pg_server: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process migrates (``ometer db upgrade`` on a big ledger) for longer than
    OMETER_LEDGER_WAIT: PostgreSQL's lock timeout was shown bare ("canceling statement due
    to lock timeout"), where SQLite's "database is locked" says what to do."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    url = _fresh_pg_database(pg_server)
    monkeypatch.setenv("OMETER_DB_URL", url)
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    holder = create_engine(url)
    with holder.connect() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        result = cli("report", "--period", "2026-11")
        conn.rollback()
    holder.dispose()
    assert result.code == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: cannot open the ledger at {make_url(url).render_as_string()}: canceling "
        "statement due to lock timeout: another process held it for longer than 0.8 s "
        "(OMETER_LEDGER_WAIT); run again once it is done, or wait longer with "
        "OMETER_LEDGER_WAIT=60\n"
    )
    assert cli("report", "--period", "2026-11").code == 0  # the lock gone, the ledger opens


def _database_encoded(pg_server: str | None, encoding: str) -> str:
    """The URL of a new database on the test server made ``ENCODING encoding``."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    name = f"a_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            )
        )
    admin.dispose()
    return f"{pg_server}/{name}"


def test_a_read_only_database_is_named_and_its_spans_wait_in_the_spool(
    cli: Any, pg_server: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A hot standby (or ``default_transaction_read_only = on``) takes reads and refuses
    writes: PostgreSQL's bare "cannot execute INSERT in a read-only transaction" said
    nothing of what to change. Reports still read it; spans wait in the spool."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database
    from tests.factories import make_span

    url = _fresh_pg_database(pg_server)
    Ledger(url, zone="UTC").record([make_span(cost_total=1_500_000)])
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f"ALTER DATABASE {make_url(url).database} SET default_transaction_read_only = on")
        )
    admin.dispose()
    monkeypatch.setenv("OMETER_DB_URL", url)
    assert cli("report", "--period", "2026-11").code == 0
    result = cli("budget", "set", "sales", "--monthly", "100")
    assert (result.code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: the ledger at {make_url(url).render_as_string()} failed: cannot execute "
        "INSERT in a read-only transaction: the database takes no writes (a hot standby, or "
        "default_transaction_read_only is on); point OMETER_DB_URL at the primary\n"
    )
    ledger = Ledger(url, spool_dir=tmp_path / "spool")
    span = make_span()
    assert ledger.record([span]) == {span.id: Stored.SPOOLED}
    ledger.dispose()


def test_a_user_without_create_on_the_schema_is_told_how_to_migrate(
    cli: Any, pg_server: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A least-privilege role (PostgreSQL 15 gives PUBLIC no CREATE on ``public``) opening
    a new ledger cannot make its tables: the bare "permission denied for schema public"
    said nothing of how to get past it."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    database = _fresh_pg_database(pg_server)
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    admin.dispose()
    url = make_url(database).set(username=role).render_as_string(False)
    monkeypatch.setenv("OMETER_DB_URL", url)
    result = cli("report", "--period", "2026-11")
    assert (result.code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: cannot open the ledger at {url}: permission denied for schema public: "
        f"the user {role} may not do this; grant it what it needs, or run `ometer db "
        "upgrade` once as the database's owner\n"
    )


def test_a_search_path_naming_no_schema_there_says_to_make_it(
    cli: Any, pg_server: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?options=-csearch_path=meter`` before ``CREATE SCHEMA meter`` (or with a typo): the
    server's "no schema has been selected to create in" said neither which nor what to do."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    url = f"{_fresh_pg_database(pg_server)}?options=-csearch_path%3Dmeter"
    monkeypatch.setenv("OMETER_DB_URL", url)
    for command in (["report", "--period", "2026-11"], ["db", "upgrade"]):
        result = cli(*command)
        assert (result.code, result.stdout) == (1, ""), result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and "no schema has been selected to create in" in line
        assert "names no schema that exists" in line and "CREATE SCHEMA" in line, line
    engine = create_engine(url.partition("?")[0])
    with engine.connect() as conn:  # nothing made anywhere else instead
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar()
            == 0
        )
    engine.dispose()


def test_a_database_whose_encoding_cannot_hold_every_name_is_not_made_a_ledger(
    pg_server: str | None,
) -> None:
    """In LATIN1 a user, model or tag in another script fails its write, and the span would be
    kept only in the quarantine, out of every report and budget: refused before any table."""
    url = _database_encoded(pg_server, "LATIN1")
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(LedgerError) as refused:
            Ledger(url)
        shown = make_url(url).render_as_string()
        assert str(refused.value) == (
            f"the database at {shown} is encoded in LATIN1, which cannot hold every name a "
            "call may carry (a user, a model or a tag in any script); nothing was changed. "
            "Make one with ENCODING 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE "
            "template0) and give it with --db / OMETER_DB_URL"
        )
        probe = create_engine(url)
        with probe.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar()
        probe.dispose()
        assert tables == 0  # nothing was changed
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {make_url(url).database} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.parametrize("why", ["statement timeout", "user request"])
def test_a_statement_the_server_cancelled_names_the_statement_timeout(
    tmp_path: Path, why: str
) -> None:
    """PostgreSQL says "user request" for a short statement_timeout that ran out between two
    statements (ci108, a 1 ms timeout on a loaded machine): ometer sends no cancel of its own,
    so that too is the role's statement_timeout (or an admin), said with what to change."""
    from psycopg.errors import QueryCanceled
    from sqlalchemy.exc import DBAPIError

    from ollama_meter.ledger._database import Database

    cancelled = QueryCanceled(f"canceling statement due to {why}")
    said = Database(f"sqlite:///{tmp_path / 'l.db'}").explain(DBAPIError("SELECT 1", {}, cancelled))
    assert said.startswith(f"canceling statement due to {why}: the server's statement_timeout")
    assert "raise it (ALTER ROLE ... SET statement_timeout = '10min')" in said
