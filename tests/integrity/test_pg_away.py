"""A PostgreSQL ledger server that is not there (stopped, or the URL names no server) or is
on its way down: a command says so in one line, and what to do about it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.records import Stored
from ollama_meter.testing import OllamaEmulator
from tests._pg import PgCluster

NOBODY = (
    "Connection refused: no server answers at that address: start it, or correct the host "
    "and port in OMETER_DB_URL"
)
"""libpq's "Connection refused" was all a user was told: not whether the server was
stopped or the URL wrong, nor what to do."""


def _one_line(result: Any) -> str:
    assert (result.code, result.stdout) == (1, ""), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return str(lines[0])


def test_commands_on_a_stopped_server_say_to_start_it_or_fix_the_url(
    cli: Any, cluster: PgCluster, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{cluster.url}/postgres"
    Ledger(url).dispose()
    monkeypatch.setenv("OMETER_DB_URL", url)
    cluster.stop()
    for command in (["report", "--period", "month"], ["budget", "status"], ["db", "upgrade"]):
        assert _one_line(cli(*command)).endswith(NOBODY), command
    # The call is not made: which budgets cover it, and its prices, are in the ledger.
    assert _one_line(cli("chat", "--dept", "sales", "hello")).endswith(NOBODY)
    assert emulator.requests_to("/api/chat") == []


def test_commands_while_the_server_shuts_down_say_to_run_again_in_a_moment(
    cli: Any, cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A smart shutdown (``pg_ctl stop -m smart``; a restart that waits for a session)
    turns every new connection away until the last session ends: its bare "the database
    system is shutting down" did not say that this passes, or what to do."""
    url = f"{cluster.url}/postgres"
    Ledger(url).dispose()
    monkeypatch.setenv("OMETER_DB_URL", url)
    lingering = create_engine(url)
    with lingering.connect() as session:
        session.execute(text("SELECT 1"))
        stopping = cluster.stop_smart()
        try:
            result = cli("report", "--period", "month")
            deadline = time.monotonic() + 60  # a wait for pg_ctl's signal, not a measure
            while result.code == 0 and time.monotonic() < deadline:  # not yet signalled
                time.sleep(0.05)
                # A new session each try: the process's ledger keeps its sessions, and one
                # opened before the signal lives on through a smart shutdown (all 60 s).
                close_ledgers()
                result = cli("report", "--period", "month")
            said = _one_line(result)
        finally:
            session.close()
            lingering.dispose()
            stopping.wait(60)
    assert said.endswith(
        "the database system is shutting down: the server is starting, restarting or "
        "stopping; run again in a moment"
    ), said
    cluster.start()
    assert cli("report", "--period", "month").code == 0


def test_a_database_or_user_the_server_has_not_is_named_with_what_to_do(
    cli: Any, pg_server: str | None, tmp_path: Any
) -> None:
    """A typo in the URL's database or user, a database dropped or closed under a running
    gateway: the server's bare ``FATAL: database "x" does not exist`` (``role``, ``is not
    currently accepting connections``) said nothing of what to do; its spans wait meanwhile."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from sqlalchemy.engine import make_url

    from tests.conftest import _fresh_pg_database
    from tests.factories import make_span

    closed = _fresh_pg_database(pg_server)
    ledger = Ledger(closed, spool_dir=tmp_path / "spool")
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {make_url(closed).database} ALLOW_CONNECTIONS false"))
    ledger.engine.dispose()  # its sessions end (a restart); new ones are refused
    server = make_url(pg_server)
    cases = [
        (f"{pg_server}/no_such_db", "no database of that name on this server: create it"),
        (server.set(username="nobody", database="postgres").render_as_string(False),
         "no user of that name on this server: create it (CREATE ROLE name LOGIN)"),
        (closed, "the database is closed to connections; open it (ALTER DATABASE"),
    ]  # fmt: skip
    try:
        for url, says in cases:
            said = _one_line(cli("report", "--period", "month", "--db", url))
            assert says in said and "OMETER_DB_URL" in said, said
        span = make_span()
        assert ledger.record([span]) == {span.id: Stored.SPOOLED}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {make_url(closed).database} ALLOW_CONNECTIONS true"))
        admin.dispose()
    ledger.record([])
    assert ledger.count() == 1 and ledger.spool.pending() == []
    ledger.dispose()


@pytest.fixture
def http_port() -> Iterator[int]:
    """A port where an HTTP server answers whatever comes with a 400, at once (as the
    gateway or a web server does): what a URL naming the wrong service's port reaches."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def answer() -> None:
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stopped.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone left it 10 s)
    listener.close()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
def test_a_url_naming_a_server_that_is_not_postgresql_says_to_fix_the_port(
    cli: Any, http_port: int, sslmode: str
) -> None:
    """OMETER_DB_URL with the gateway's or Ollama's port: libpq's "received invalid response
    to SSL negotiation: H" (with sslmode=disable "expected authentication request from
    server, but received H") said nothing of what was wrong, nor what to do."""
    url = f"postgresql+psycopg://ometer:pw@127.0.0.1:{http_port}/ometer?sslmode={sslmode}"
    for command in (["report", "--period", "month"], ["log"], ["db", "export"]):
        said = _one_line(cli(*command, "--db", url))
        assert said.endswith(
            ": what answers at that address is not a PostgreSQL server (an HTTP server, "
            "say): correct the host and port in OMETER_DB_URL"
        ), said


def test_a_url_naming_a_silent_server_says_it_may_not_be_postgresql(
    cli: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama's port in OMETER_DB_URL: its server waits for an HTTP request line that never
    comes, as a stopped one would; the message named only a stopped, overloaded or cut-off
    server, not the likelier typo."""
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    url = emulator.url.replace("http://", "postgresql+psycopg://ometer:pw@") + "/ometer"
    said = _one_line(cli("report", "--period", "month", "--db", url))
    assert said.endswith(
        ": the server did not answer within 2 s (OMETER_LEDGER_WAIT): it is stopped, "
        "overloaded or cut off, or is not a PostgreSQL server (check the port in "
        "OMETER_DB_URL)"
    ), said
