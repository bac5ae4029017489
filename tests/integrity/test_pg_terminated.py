"""A PostgreSQL session of ometer's ended by the server mid-work (``pg_terminate_backend``,
``pg_ctl restart -m fast``): the work is rolled back or finished later, never half done,
and the command that was cut says so in one line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, prune, rebuild
from ollama_meter.ledger._plan import raw_spans
from ollama_meter.ledger._rollup import REBUILD_LOCK
from ollama_meter.periods import parse_period
from ollama_meter.reports import spend_report
from tests.factories import make_span

START = datetime(2026, 11, 1, 12, tzinfo=UTC)
NOW = START + timedelta(days=25)
BY = ["tenant", "department", "day"]


def _report(ledger: Ledger) -> tuple[list[Any], list[Any]]:
    """The month's report from rollups, and from raw spans."""
    window = parse_period("2026-11", tz=UTC, now=NOW)
    cells = spend_report(ledger, window, BY, tz=UTC).rows
    with raw_spans():
        return cells, spend_report(ledger, window, BY, tz=UTC).rows


def _rollup(ledger: Ledger) -> object:
    return rebuild(ledger.write, ledger.read)


def _prune(ledger: Ledger) -> object:
    return prune(ledger, 5, now=NOW)


@pytest.mark.parametrize("work", [_rollup, _prune], ids=["rollup", "prune"])
def test_upkeep_whose_session_the_server_ends_says_run_again_and_leaves_rollups_whole(
    pg_server: str | None, work: Callable[[Ledger], object]
) -> None:
    """The session is ended while the work waits for the rollups' lock (a gateway's write
    holds it): the error was PostgreSQL's bare "terminating connection due to administrator
    command", which does not say whether anything was done, or what to do now."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    url = _fresh_pg_database(pg_server)
    ledger = Ledger(url, zone="UTC")
    days = [make_span(started_at=START + timedelta(days=d), cost_total=d + 1) for d in range(20)]
    ledger.record(days)
    before = _report(ledger)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work(ledger)
        except BaseException as exc:
            failed.append(exc)

    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    holder = create_engine(url)
    if work is _rollup:  # cells to correct: a rebuild of right ones writes (and locks) nothing
        with holder.begin() as conn:
            conn.execute(text("UPDATE rollups SET cost_total = cost_total + 1"))
    worker = threading.Thread(target=run)
    with holder.connect() as held, admin.connect() as killer:
        held.execute(text(f"SELECT pg_advisory_xact_lock({REBUILD_LOCK})"))
        worker.start()
        waiting: list[int] = []
        for _ in range(400):
            waiting = list(
                held.execute(
                    text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                ).scalars()
            )
            if waiting:
                break
            time.sleep(0.025)
        assert len(waiting) == 1
        killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[0]})
        worker.join(30)
        held.rollback()
    holder.dispose()
    admin.dispose()
    assert [type(exc) for exc in failed] == [LedgerError]
    assert str(failed[0]) == (
        f"the ledger at {make_url(url).render_as_string()} failed: terminating connection "
        "due to administrator command: the server ended this session (a restart, or "
        "pg_terminate_backend); what it had not committed is undone: run it again"
    )
    ledger.dispose()
    again = Ledger(url)  # finishes a rebuild that was cut, as any process opening it does
    assert again.count() == 20
    assert _report(again) == before
    assert before[0] == before[1]
    again.dispose()


def test_a_server_whose_every_connection_is_taken_says_what_to_change(
    cli: Any, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other clients hold every one of the server's ``max_connections``: its "sorry, too
    many clients already" was shown bare (only a role's own CONNECTION LIMIT was named)."""
    admin = create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("ALTER SYSTEM SET max_connections = 4"))
        conn.execute(text("ALTER SYSTEM SET superuser_reserved_connections = 0"))
        conn.execute(text("CREATE DATABASE full_server"))
    admin.dispose()
    cluster.stop()
    cluster.start()
    url = f"{cluster.url}/full_server"
    Ledger(url).dispose()
    others = create_engine(url, pool_size=4)
    taken = [others.connect() for _ in range(4)]
    monkeypatch.setenv("OMETER_DB_URL", url)
    result = cli("report", "--period", "2026-11")
    for conn in taken:
        conn.close()
    others.dispose()
    assert (result.code, result.stdout) == (1, "")
    assert result.stderr.endswith(
        "sorry, too many clients already: the server is at its connection limit "
        "(max_connections, or the user's CONNECTION LIMIT); each ometer process keeps up to "
        "30, so raise the limit or stop idle clients\n"
    )
    assert len(result.stderr.splitlines()) == 1


def test_a_read_the_server_ends_for_sitting_idle_says_the_process_stalled(
    pg_server: str | None,
) -> None:
    """A report whose process stalls inside its read transaction (a machine overloaded for
    seconds, a paused VM) past the idle timeout ometer sets for its sessions: the error was
    PostgreSQL's bare "terminating connection due to idle-in-transaction timeout", which says
    neither why nor what to do. The stall is made short here, with the session's own setting."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    ledger = Ledger(_fresh_pg_database(pg_server), zone="UTC")
    ledger.record([make_span(started_at=START)])

    def stalled_read() -> None:
        with ledger.read() as conn:
            conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 50"))
            time.sleep(0.3)  # the stall
            conn.execute(text("SELECT count(*) FROM spans"))

    with pytest.raises(LedgerError) as raised:
        stalled_read()
    said = str(raised.value)
    assert "idle-in-transaction timeout: this process sat silent inside a transaction" in said
    assert "what it had not committed is undone: run it again" in said and "\n" not in said
    assert _report(ledger)[0]  # the next read is answered (a new session)


def test_a_read_may_sit_idle_a_minute_and_a_write_only_as_long_as_others_wait_for_it(
    pg_server: str | None,
) -> None:
    """Reports stalled on a busy machine (load average 10 on two cores) were ended half way
    through their reads by the 5 s ometer gives a transaction to sit idle, which exists for
    writes: their row locks hold the other processes' writes. A read holds none."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    ledger = Ledger(_fresh_pg_database(pg_server), zone="UTC")
    show = text("SHOW idle_in_transaction_session_timeout")
    with ledger.read() as conn:
        assert conn.execute(show).scalar() == "1min"
    with ledger.write() as conn:
        assert conn.execute(show).scalar() == "5s"
    with ledger.read() as conn:  # the read's own setting ended with it: the session is as it was
        conn.commit()
        assert conn.execute(show).scalar() == "5s"
