"""A PostgreSQL ledger behind a real PgBouncer, in session and in transaction pooling.

PgBouncer refuses the session settings ometer sends in libpq's ``options`` (its lock and
idle timeouts, ISO dates, a URL's own search path); a DBA has it drop them
(``ignore_startup_parameters = options``), and it drops them without a word. Each of
ometer's transactions must still run under them, however the connection was made.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._deadline import unbounded
from ollama_meter.ledger._rollup import REBUILD_LOCK
from ollama_meter.records import Stored
from tests._pgbouncer import PGBOUNCER, pgbouncer
from tests.factories import make_span
from tests.integrity.test_pg_locked import MIGRATION_LOCK


def _need_pgbouncer(pg_server: str | None) -> str:
    """The test server's URL, once PgBouncer is known to be installed (skipped if not)."""
    if PGBOUNCER is None:
        if os.environ.get("OMETER_TEST_REQUIRE_PGBOUNCER"):  # CI installs it (.ci/run)
            pytest.fail("OMETER_TEST_REQUIRE_PGBOUNCER is set but pgbouncer is not installed")
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    return pg_server


@pytest.fixture(scope="module", params=["session", "transaction"])
def pooler(request: pytest.FixtureRequest, pg_server: str | None) -> Iterator[str]:
    """The test server's URL through a PgBouncer in each pool mode."""
    with pgbouncer(_need_pgbouncer(pg_server), request.param) as url:
        yield url


def _through(pooler: str, pg_url: str) -> str:
    return f"{pooler}/{make_url(pg_url).database}"


SETTINGS = text(
    "SELECT current_setting('lock_timeout'), "
    "current_setting('idle_in_transaction_session_timeout'), "
    "current_setting('DateStyle'), current_setting('IntervalStyle')"
)


def test_ometers_session_settings_hold_in_every_transaction_behind_the_pooler(
    pooler: str, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropped by the pooler, none was in force: a lock another session held made a write wait
    until the deadline on every answer took the server for frozen, a process stopped inside a
    write held its locks for ever, and a database's own DateStyle reached the driver."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        name = make_url(pg_url).database
        conn.execute(text(f"ALTER DATABASE {name} SET DateStyle = 'German, DMY'"))
        conn.execute(text(f"ALTER DATABASE {name} SET IntervalStyle = 'sql_standard'"))
    admin.dispose()
    caplog.set_level(logging.INFO, "ollama_meter.ledger")
    ledger = Ledger(_through(pooler, pg_url), wait=1.0)
    for _ in range(3):  # each transaction, on whichever server session the pooler lends
        assert ledger.record([make_span()]) != {}
        with ledger.write() as conn:
            assert conn.execute(SETTINGS).one() == ("800ms", "5s", "ISO, DMY", "postgres")
    assert ledger.count() == 3
    said = [r.getMessage() for r in caplog.records if "pooler" in r.getMessage()]
    assert said == [
        "the server's sessions lack the settings ometer sent as it connected (lock_timeout, "
        "idle_in_transaction_session_timeout, DateStyle, IntervalStyle): a connection pooler "
        "dropped them, so each transaction sets them"
    ]
    ledger.dispose()


def test_a_lock_another_session_holds_ends_the_wait_with_the_servers_answer(
    pooler: str, pg_url: str, holder: Connection
) -> None:
    """Without ``lock_timeout`` the write waited until the deadline on every answer cut the
    connection, took the server for silent and refused every connection for as long again:
    the next write, the lock free by then, was spooled too. (Two seconds: the server's answer
    has 0.4 s to come back through the pooler on a busy machine before that deadline.)"""
    ledger = Ledger(_through(pooler, pg_url), wait=2.0)
    ledger.record([make_span()])
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    first, second = make_span(department="sales"), make_span(department="ops")
    assert ledger.record([first]) == {first.id: Stored.SPOOLED}
    holder.rollback()
    assert ledger.record([second]) == {second.id: Stored.COMMITTED}  # and brings in the first
    assert ledger.count() == 3
    ledger.dispose()


def _waited(work: Callable[[], object], holder: Connection) -> tuple[float, list[object]]:
    """Seconds ``work`` waited (up to 10: then ``holder``'s locks are let go), and what it gave
    or raised."""
    ended: list[object] = []

    def run() -> None:
        try:
            ended.append(work())
        except Exception as exc:
            ended.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(10)
    waited = time.monotonic() - started
    holder.rollback()  # frees a worker still waiting
    worker.join(10)
    return waited, ended


def test_bulk_work_behind_the_pooler_gives_up_on_a_held_lock(
    pooler: str, pg_url: str, holder: Connection
) -> None:
    """Upkeep (an import, a prune) is exempt from the deadline on every answer, not from
    ``lock_timeout``: without it, a lock another session held made it wait for ever."""
    ledger = Ledger(_through(pooler, pg_url), wait=1.0)
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})
    span = make_span()

    def bulk() -> dict[str, Stored]:
        with unbounded():
            return ledger.record([span])

    waited, ended = _waited(bulk, holder)
    assert waited < 5, f"the write waited {waited:.1f} s for the lock"
    assert ended == [{span.id: Stored.SPOOLED}]
    ledger.dispose()


def test_opening_a_ledger_another_process_migrates_behind_the_pooler_fails_after_the_wait(
    pooler: str, pg_url: str, holder: Connection
) -> None:
    """Every command opens the ledger, migrating it under the lock every ometer takes for that
    (``ometer db upgrade`` on a big ledger holds it long): behind the pooler it waited for ever."""
    holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    waited, ended = _waited(lambda: Ledger(_through(pooler, pg_url), wait=1.0), holder)
    assert waited < 5, f"opening the ledger waited {waited:.1f} s for the lock"
    assert len(ended) == 1 and isinstance(ended[0], LedgerError), ended
    assert "due to lock timeout: another process held it for longer than 0.8 s" in str(ended[0])


def test_a_urls_own_search_path_holds_behind_the_pooler(pooler: str, pg_url: str) -> None:
    """``?options=-csearch_path=meter`` puts a ledger in a schema of its own; the pooler
    dropped it with the rest, and the tables were made in ``public``."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE SCHEMA meter"))
    url = f"{_through(pooler, pg_url)}?options=-csearch_path%3Dmeter%20-capplication_name%3Db"
    ledger = Ledger(url, wait=1.0)
    ledger.record([make_span(), make_span()])
    with ledger.write() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar() == "meter"
    ledger.dispose()
    with admin.connect() as conn:
        found = "to_regclass('meter.spans') IS NOT NULL, to_regclass('public.spans') IS NULL"
        assert conn.execute(text(f"SELECT {found}")).one() == (True, True)
        assert conn.execute(text("SELECT count(*) FROM meter.spans")).scalar() == 2
    admin.dispose()


def test_budget_commands_read_dates_behind_the_pooler(
    pooler: str, pg_url: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A German site's database default reached the driver, which reads only ISO dates:
    ``budget status`` failed as "can't parse timestamptz with DateStyle"."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        name = make_url(pg_url).database
        conn.execute(text(f"ALTER DATABASE {name} SET DateStyle = 'German, DMY'"))
    admin.dispose()
    monkeypatch.setenv("OMETER_DB_URL", _through(pooler, pg_url))
    made = cli("budget", "set", "sales", "--monthly", "10")
    assert made.code == 0, made.stderr
    status = cli("budget", "status")
    assert status.code == 0 and "sales" in status.stdout, status.stderr


def test_the_server_sessions_the_pooler_lends_others_keep_none_of_ometers_settings(
    pooler: str, pg_url: str
) -> None:
    """Under transaction pooling, a session-wide ``SET`` would stay with the server session
    for the next client the pooler lends it to: ometer's settings are the transaction's."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {make_url(pg_url).database} SET DateStyle = 'SQL'"))
    admin.dispose()
    ledger = Ledger(_through(pooler, pg_url), wait=1.0)
    for _ in range(3):
        ledger.record([make_span()])
    other = create_engine(_through(pooler, pg_url))
    with other.connect() as conn:  # the session the ledger's writes ran on, once they end
        shown = conn.execute(SETTINGS).one()
    other.dispose()
    assert shown == ("0", "0", "SQL, MDY", "postgres")
    ledger.dispose()


def test_writes_go_on_when_the_pooler_lends_another_server_session(
    pooler: str, pg_url: str
) -> None:
    """The driver prepares a statement run five times on its session; under transaction pooling
    the next transaction may run on another server session, which has not got it: each write
    failed as "prepared statement does not exist" and spooled its spans."""
    url = _through(pooler, pg_url)
    ledger = Ledger(url, wait=1.0)
    for _ in range(8):
        ledger.record([make_span()])
    other = create_engine(url)
    with other.connect() as busy:  # holds the server session the ledger's writes ran on
        busy.execute(text("SELECT 1"))
        span = make_span()
        assert ledger.record([span]) == {span.id: Stored.COMMITTED}
        busy.rollback()
    other.dispose()
    assert ledger.count() == 9
    ledger.dispose()


def test_a_pooler_that_refuses_ometers_session_settings_says_how_to_let_them_through(
    pg_server: str | None, pg_url: str
) -> None:
    """PgBouncer as installed refuses ``options``: its bare "unsupported startup parameter"
    named neither the pooler nor what to change."""
    with pgbouncer(_need_pgbouncer(pg_server), "transaction", ignore=False) as strict:
        with pytest.raises(LedgerError) as refused:
            Ledger(_through(strict, pg_url), wait=1.0)
    assert "unsupported startup parameter: options: a connection pooler (PgBouncer, say)" in (
        str(refused.value)
    )
    assert "ignore_startup_parameters = options), and ometer sets them in each transaction" in (
        str(refused.value)
    )


def test_a_pooler_in_statement_pooling_says_to_pool_by_transaction(
    pg_server: str | None, pg_url: str
) -> None:
    """PgBouncer with ``pool_mode = statement`` runs no transaction, which every ledger write
    needs (a span and its rollup rows together): its bare "transaction blocks not allowed in
    statement pooling mode" named no fix."""
    with pgbouncer(_need_pgbouncer(pg_server), "statement") as pooled:
        with pytest.raises(LedgerError) as refused:
            Ledger(_through(pooled, pg_url), wait=1.0)
    assert str(refused.value).endswith(
        "transaction blocks not allowed in statement pooling mode: a connection pooler "
        "(PgBouncer, say) answers at that address, pooling by statement, and every ledger "
        "write is a transaction (a span and its rollups together); have it pool this "
        "database by transaction (pool_mode = transaction) or session, or point "
        "OMETER_DB_URL at PostgreSQL itself"
    ), refused.value


def test_a_pooler_with_every_client_connection_taken_is_a_connection_limit(
    pg_server: str | None, pg_url: str
) -> None:
    """PgBouncer's ``max_client_conn`` reached (other clients, or gateways each keeping up to
    30): its bare "no more connections allowed (max_client_conn)" named no fix, and a
    starting gateway gave up at once where it waits for a server at its connection limit."""
    from ollama_meter.cli._waiting import unreachable

    with pgbouncer(_need_pgbouncer(pg_server), "transaction", more="max_client_conn = 1\n") as full:
        other = create_engine(_through(full, pg_url))
        with other.connect(), pytest.raises(LedgerError) as refused:
            Ledger(_through(full, pg_url), wait=1.0)
        other.dispose()
    assert str(refused.value).endswith(
        "no more connections allowed (max_client_conn): the server is at its connection limit "
        "(max_connections, or the user's CONNECTION LIMIT); each ometer process keeps up to "
        "30, so raise the limit or stop idle clients"
    ), refused.value
    assert unreachable(refused.value)


def test_a_connection_straight_to_the_server_sets_nothing_per_transaction(pg_url: str) -> None:
    """The server took the settings as the session began: a transaction asks nothing more of it
    (a round trip each would slow every write for a pooler that is not there)."""
    from sqlalchemy import event

    ledger = Ledger(pg_url, wait=1.0)
    seen: list[str] = []
    event.listen(ledger.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    ledger.record([make_span()])
    with ledger.write() as conn:
        assert conn.execute(SETTINGS).one() == ("800ms", "5s", "ISO, MDY", "postgres")
    assert seen and not [statement for statement in seen if "set_config" in statement]
    ledger.dispose()


NAME = st.from_regex(r"[a-z][a-z_]{0,20}(\.[a-z_]{1,10})?", fullmatch=True)
VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@given(
    settings=st.lists(st.tuples(NAME, VALUE), max_size=5),
    spellings=st.lists(st.sampled_from(["-c {}", "-c{}", "--{}"]), min_size=5, max_size=5),
)
def test_the_settings_a_url_gives_are_the_ones_each_transaction_sets(
    settings: list[tuple[str, str]], spellings: list[str]
) -> None:
    """What a pooler dropped is set again from the ``options`` ometer sent: each ``-c``
    spelling PostgreSQL takes, white space and backslashes escaped as the server reads them
    (``pg_split_opts``), the last one winning."""
    from ollama_meter.ledger._session import settings_in

    written = " ".join(
        spelling.format(re.sub(r"([ \t\n\v\f\r\\])", r"\\\1", f"{name}={value}"))
        for (name, value), spelling in zip(settings, spellings, strict=False)
    )
    assert settings_in(written) == {name.replace("-", "_"): value for name, value in settings}
