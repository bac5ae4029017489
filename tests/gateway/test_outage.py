"""The ledger's database goes away under a running gateway, and comes back."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import OllamaEmulator
from tests._pg import PgCluster
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]


def _spooled(spool: Any) -> int:
    """Spans in the spool: a file holds a batch's (spans that waited for one commit together)."""
    return sum(path.read_bytes().count(b"\n") for path in spool.pending())


def _budgets_for_sales_and_legal(url: str, *rules: PriceRule) -> None:
    """A hard monthly budget for acme/sales and acme/legal (a billion micro-units each)."""
    setup = Ledger(url)
    for rule in rules:
        setup.add_price_rule(rule)
    for department in ("sales", "legal"):
        setup.save_budget(
            Budget(tenant="acme", department=department, period="month", limit=10**9,
                   currency="USD")
        )  # fmt: skip
    setup.dispose()


def test_an_outage_refuses_only_what_it_must_and_loses_no_span(
    cluster: PgCluster, serve_on: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    url = f"{cluster.url}/postgres"
    _budgets_for_sales_and_legal(url)
    # The server ends a transaction idle for max(OMETER_LEDGER_WAIT, 5 s): a gateway thread
    # starved that long between two statements (a busy machine) had the call before the
    # outage refused or spooled. That bound is not under test here; the outage is.
    gw = serve_on(emulator.url, url, config={"ledger_wait": 30.0})

    def chat(department: str) -> httpx.Response:
        return httpx.post(
            f"{gw.url}/api/chat",
            json={"model": "llama3.1:8b", "messages": HI, "stream": False},
            headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": department},
            timeout=30,
        )

    assert chat("support").status_code == 200 and chat("sales").status_code == 200
    gw.settle()  # both committed before the outage
    cluster.stop()
    # No budget covers support: served, its span kept in the spool.
    assert chat("support").status_code == 200
    # Sales' budget leased room before the outage: its calls are admitted against it.
    assert chat("sales").status_code == 200
    # Legal has a hard budget with no lease here, and it cannot be checked now: refused
    # before Ollama, clearly.
    refused = chat("legal")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "budget for acme/legal cannot be checked" in refused.json()["error"]
    assert _spooled(gw.ledger.spool) == 3
    assert len(emulator.requests_to("/api/chat")) == 4
    time.sleep(5.2)  # past the budget cache's reload interval: the reload fails, the budgets stay
    assert chat("support").status_code == 200
    assert chat("legal").status_code == 503
    assert _spooled(gw.ledger.spool) == 5
    cluster.start()
    # A write brings in what a slice of time lets it (0.2 s): on a busy machine, less than
    # five files. This one has all the time it needs.
    gw.ledger.drain_slice = 60.0
    assert chat("support").status_code == 200  # this write succeeds and brings in the spool
    assert gw.ledger.spool.pending() == []
    spans: list[Any] = Ledger(url).latest(SpanFilter(), 10)
    assert sorted((s.department, s.status, s.error_type) for s in spans) == [
        ("legal", "error", "ledger_unavailable"),
        ("legal", "error", "ledger_unavailable"),
        ("sales", "ok", None),
        ("sales", "ok", None),
        ("support", "ok", None),
        ("support", "ok", None),
        ("support", "ok", None),
        ("support", "ok", None),
    ]


def test_prices_in_force_stay_in_force_while_the_database_is_away(cluster: PgCluster) -> None:
    from decimal import Decimal

    from ollama_meter.config import load_settings
    from ollama_meter.errors import LedgerError
    from ollama_meter.meter import PriceSource
    from ollama_meter.pricing import PriceRule

    url = f"{cluster.url}/postgres"
    ledger = Ledger(url)
    ledger.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(7)))
    prices = PriceSource(ledger, settings=load_settings(db_url=url), ttl=0.0)
    before = prices()
    cluster.stop()
    assert prices() is before  # the reload fails; the book in force a moment ago still is
    with pytest.raises(LedgerError, match="failed"):
        PriceSource(ledger, settings=load_settings(db_url=url))()  # nothing known yet: say so
    ledger.dispose()


def test_a_frozen_ledger_slows_calls_by_a_bounded_wait_and_loses_none(
    cluster: PgCluster,
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server stops answering (SIGSTOP) under an in-process gateway: callers no budget
    covers get their answers, several at once; a hard budget with room leased before keeps
    admitting against it; one that must reach the ledger refuses; all spans land once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.factories import token_prices
    from tests.integrity.test_frozen_server import SILENT, quiet_passes, returns

    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    url = f"{cluster.url}/postgres"
    _budgets_for_sales_and_legal(url, token_prices())
    gw = app_on(emulator.url, url)

    def chat(department: str) -> httpx.Response:
        return gw.client.post(
            "/api/chat",
            json={"model": "llama3.1:8b", "messages": HI, "stream": False},
            headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": department},
        )

    assert chat("support").status_code == 200 and chat("sales").status_code == 200
    departments = ["support"] * 4 + ["sales", "legal"]
    with cluster.frozen(), ThreadPoolExecutor(len(departments)) as callers:
        answers = returns(lambda: list(callers.map(chat, departments)))
    assert [a.status_code for a in answers] == [200] * 5 + [503]
    refused = answers[-1]
    assert refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert error.startswith("the budget for acme/legal cannot be checked, so the call was not made")
    assert re.search(SILENT, error) and "\n" not in error
    assert len(emulator.requests_to("/api/chat")) == 7  # legal never reached Ollama
    quiet_passes()
    gw.ledger.drain_slice = 60.0  # the whole spool in one write, however busy the machine
    assert chat("support").status_code == 200  # the server runs: this write drains the spool
    assert gw.ledger.spool.pending() == []
    spans = Ledger(url).latest(SpanFilter(), 20)
    assert sorted((s.department, s.status, s.error_type) for s in spans) == sorted(
        [("support", "ok", None)] * 6
        + [("sales", "ok", None)] * 2
        + [("legal", "error", "ledger_unavailable")]
    )
    assert len({s.id for s in spans}) == 9
    # Each answer is Ollama's (5 prompt tokens, 25 reply tokens), and so is each span.
    assert {(a.json()["prompt_eval_count"], a.json()["eval_count"]) for a in answers[:5]} == {
        (5, 25)
    }
    assert {(s.input_tokens, s.output_tokens, s.cost_total) for s in spans if s.status == "ok"} == {
        (5, 25, 5 * 1000 + 25 * 2000)
    }


def test_budget_failures_in_an_outage_log_one_line_per_kind_and_count_the_rest(
    cluster: PgCluster,
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settling budgets and checking alerts logged a full traceback on every call while the
    database was away: pages of them per minute, for one known condition."""
    from decimal import Decimal

    from ollama_meter import _logging

    monkeypatch.setattr(_logging, "FAILURE_INTERVAL", 2.0)  # 10 s in production
    url = f"{cluster.url}/postgres"
    setup = Ledger(url)
    setup.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(7)))
    for department in ("sales", "legal"):  # soft: calls go on; their spend is read for alerts
        setup.save_budget(
            Budget(tenant="acme", department=department, period="month", limit=10**9,
                   currency="USD", hard=False)
        )  # fmt: skip
    setup.dispose()
    gw = serve_on(emulator.url, url)

    def chat(department: str) -> int:
        return httpx.post(
            f"{gw.url}/api/chat",
            json={"model": "llama3.1:8b", "messages": HI, "stream": False},
            headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": department},
            timeout=30,
        ).status_code

    assert chat("sales") == 200  # the budgets are loaded; legal's spend was never read
    gw.settle()
    cluster.stop()
    with (
        caplog.at_level(logging.DEBUG, "ollama_meter.meter"),
        caplog.at_level(logging.DEBUG, "ollama_meter.ledger"),
    ):
        for _ in range(6):  # each span written (spooled) before the next: a line each
            assert chat("legal") == 200
            gw.settle()
        time.sleep(2.1)
        assert chat("legal") == 200
        gw.settle()
    # Each call's span went to the spool, said the same way: a line, then a count.
    spooled = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ollama_meter.ledger"
        and r.levelno >= logging.WARNING
        and "kept them in" in r.getMessage()
    ]
    assert 2 <= len(spooled) < 7, spooled
    more = [re.search(r"\(and (\d+) more time\(s\) in the last 2 s\)", line) for line in spooled]
    assert sum(1 + (int(m[1]) if m else 0) for m in more) == 7
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ollama_meter.meter" and r.levelno >= logging.WARNING
    ]
    assert all("checking budget alerts after span" in line for line in lines), lines
    assert 2 <= len(lines) < 7, "a line per call"
    assert all("\n" not in line and "ledger at postgresql" in line for line in lines)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
    # None goes unsaid: each line counts the failures not logged since the one before (which
    # lines those are depends on how fast the machine made the calls; the first is the first).
    counted = [re.search(r"\(and (\d+) more time\(s\) in the last 2 s\)", line) for line in lines]
    assert counted[0] is None
    assert sum(1 + (int(m[1]) if m else 0) for m in counted) == 7


def test_a_gateway_starting_before_its_database_server_waits_for_it(
    cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway started while its PostgreSQL server was still starting (a boot, a restart of
    both) exited at once, "connection refused", and systemd's restart limit could give up
    on it for good. It waits for a server it cannot reach, saying so once."""
    import threading

    from ollama_meter.cli._common import ledger_for, settings
    from ollama_meter.cli._waiting import open_when_up
    from ollama_meter.ledger import close_ledgers

    url = f"{cluster.url}/postgres"
    monkeypatch.setenv("OMETER_DB_URL", url)
    cluster.stop()
    said: list[str] = []
    starting = threading.Timer(1.0, cluster.start)
    starting.start()
    try:
        ledger = open_when_up(settings(), ledger_for, said.append)
    finally:
        starting.join()
    assert ledger.count() == 0
    assert len(said) == 2 and said[0].startswith("waiting for the database server: ")
    assert "Connection refused" in said[0] and said[1] == "the database server answers: starting"
    close_ledgers()


@pytest.mark.parametrize(
    "said",
    [
        "the database system is starting up",
        "the database system is not yet accepting connections",
        "the database system is not accepting connections",
        "the database system is in recovery mode",
        "the database system is shutting down",
    ],
)
def test_every_way_a_starting_postgresql_turns_a_connection_away_is_waited_for(said: str) -> None:
    """What PostgreSQL's postmaster answers while it starts (or restarts after a crash):
    "not yet accepting connections" comes while it replays its WAL, after "starting up",
    and a gateway that took it for a refusal exited in the middle of the wait."""
    from ollama_meter.cli._waiting import unreachable
    from ollama_meter.errors import LedgerError

    failure = f'connection to server at "127.0.0.1", port 5432 failed: FATAL:  {said}'
    assert unreachable(LedgerError(f"cannot open the ledger at postgresql://x/y: {failure}"))


def test_a_database_server_that_refuses_is_no_reason_to_wait(
    cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong database name (or password) is said at once: waiting would not mend it."""
    from ollama_meter.cli._common import ledger_for, settings
    from ollama_meter.cli._waiting import open_when_up
    from ollama_meter.errors import LedgerError

    monkeypatch.setenv("OMETER_DB_URL", f"{cluster.url}/no_such_database")
    slept: list[float] = []
    with pytest.raises(LedgerError, match="no_such_database"):
        open_when_up(settings(), ledger_for, print, sleep=slept.append)
    assert slept == []


def test_an_idle_gateway_brings_in_the_outages_spans_once_the_server_is_back(
    cluster: PgCluster, app_on: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    """Only a write that succeeded drained the spool: a gateway that got no call after the
    outage (a night, a month end) kept the outage's calls out of the ledger, out of every
    other host's reports, and their cost held in its budget lease, until its next call."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    url = f"{cluster.url}/postgres"
    _budgets_for_sales_and_legal(url)
    gw = app_on(emulator.url, url)

    def chat(department: str) -> int:
        return gw.client.post(
            "/api/chat",
            json={"model": "llama3.1:8b", "messages": HI, "stream": False},
            headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": department},
        ).status_code

    assert [chat("sales"), chat("support")] == [200, 200]
    gw.settle()
    cluster.stop()
    assert [chat("sales"), chat("support"), chat("support")] == [200, 200, 200]
    gw.settle()
    assert _spooled(gw.meter.ledger.spool) == 3
    cluster.start()
    # Read as another host reads it: not through a ledger of this process (opening one
    # would bring the spool in itself).
    elsewhere = create_engine(url, poolclass=NullPool)
    found: list[str] = []
    deadline = time.monotonic() + 60  # a wait for the gateway's next try, not a measure
    while len(found) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
        with elsewhere.connect() as conn:
            found = list(conn.execute(text("SELECT department FROM spans")).scalars())
    elsewhere.dispose()
    assert sorted(found) == ["sales", "sales"] + ["support"] * 3
    assert gw.meter.ledger.spool.pending() == []


def test_an_idle_gateway_brings_in_a_long_outages_spool_back_to_back(
    cluster: PgCluster,
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle gateway recorded one slice of the spool (0.2 s of it) each idle wait (5 s):
    600 spans spooled took two waits, 10 s, and an hour's outage at 10 calls a second
    (36,000 spans, some 80 a second) eight minutes of reports and budget leases behind;
    nothing else waits meanwhile. With the wait made an hour here and a slice a file, the
    first call after the outage recorded one file of ten, and the other nine waited the hour."""
    from ollama_meter.meter import _behind

    monkeypatch.setattr(_behind, "SPOOL_RETRY_S", 3600.0)
    url = f"{cluster.url}/postgres"
    gw = app_on(emulator.url, url)
    gw.meter.ledger.drain_slice = 0.0  # a slice is one file: a batch's spans

    def chat() -> str:
        answer = gw.client.post(
            "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
        )
        assert answer.status_code == 200
        gw.settle()  # a commit of its own: a file of its own in the spool
        return answer.headers["x-ometer-span-id"]

    cluster.stop()
    answered = [chat() for _ in range(10)]
    assert len(gw.meter.ledger.spool.pending()) == 10
    cluster.start()
    answered.append(chat())  # a write that succeeds: its commit records a slice
    deadline = time.monotonic() + 60  # a hang guard, not a measure
    while gw.meter.ledger.spool.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(gw.meter.ledger.spool.pending()) == 0
    recorded = [s.id for s in gw.ledger.latest(SpanFilter(), 100)]
    assert sorted(recorded) == sorted(answered)


def test_healthz_says_why_the_ledgers_server_fails_and_ok_once_it_is_back(
    cluster: PgCluster, app_on: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    """Stopped, then at its connection limit: calls are answered, ``/healthz`` is 503 with the
    server's words and what to do, and ok again with every span in once, no restart."""
    import psycopg

    url = f"{cluster.url}/postgres"
    gw = app_on(emulator.url, url)
    gw.meter.ledger.drain_slice = 60.0  # the whole spool in the first write that succeeds

    def chat() -> str:
        answer = gw.client.post(
            "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
        )
        assert answer.status_code == 200
        gw.settle()
        return answer.headers["x-ometer-span-id"]

    def health() -> tuple[int, str]:
        said = gw.client.get("/healthz")
        return said.status_code, said.json()["ledger"]

    answered = [chat()]
    cluster.stop()
    answered.append(chat())
    status, said = health()
    assert status == 503 and said.endswith(
        "Connection refused: no server answers at that address: start it, or correct the host "
        "and port in OMETER_DB_URL; spans wait in the spool meanwhile"
    ), said
    cluster.start()
    answered.append(chat())  # its write takes the spool in too
    assert health() == (200, "ok")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")  # fmt: skip
    taken: list[Any] = []
    try:
        while True:  # every connection the server has (a superuser's reserve too)
            taken.append(psycopg.connect(url.replace("+psycopg", "")))
    except psycopg.OperationalError:
        pass
    try:
        answered.append(chat())
        status, said = health()
    finally:
        for conn in taken:
            conn.close()
    assert status == 503 and said.endswith(
        "too many clients already: the server is at its connection limit (max_connections, or "
        "the user's CONNECTION LIMIT); each ometer process keeps up to 30, so raise the limit "
        "or stop idle clients; spans wait in the spool meanwhile"
    ), said
    answered.append(chat())
    assert health() == (200, "ok")
    assert gw.meter.ledger.spool.pending() == []
    assert sorted(s.id for s in gw.ledger.latest(SpanFilter(), 100)) == sorted(answered)


def test_a_gateway_that_loses_its_database_before_its_first_call_serves_and_prices_it(
    cluster: PgCluster, app_on: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    """Started with the server up, the gateway read its prices and budgets only at its first
    call: the server gone before then, every call was refused 503 with the bare ledger error,
    with no span and no log line, where a gateway warmed by one call served them all."""
    from tests.factories import token_prices

    url = f"{cluster.url}/postgres"
    _budgets_for_sales_and_legal(url, token_prices())
    gw = app_on(emulator.url, url)
    cluster.stop()

    def chat(department: str) -> httpx.Response:
        return gw.client.post(
            "/api/chat",
            json={"model": "llama3.1:8b", "messages": HI, "stream": False},
            headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": department},
        )

    assert [chat("support").status_code for _ in range(3)] == [200, 200, 200]
    refused = chat("legal")  # a hard budget with no lease: refused as unchecked, a span too
    assert refused.status_code == 503
    assert "budget for acme/legal cannot be checked" in refused.json()["error"]
    gw.settle()
    assert _spooled(gw.ledger.spool) == 4
    cluster.start()
    gw.ledger.drain_slice = 60.0
    assert chat("support").status_code == 200  # this write brings in the spool
    assert gw.ledger.spool.pending() == []
    spans = Ledger(url).latest(SpanFilter(), 10)
    assert sorted((s.department, s.status, s.cost_total) for s in spans) == [
        ("legal", "error", 0),
        *[("support", "ok", 5 * 1000 + 25 * 2000)] * 4,
    ]


@pytest.mark.parametrize(
    "said",
    [
        "sorry, too many clients already",
        'too many connections for role "ometer"',
        'too many connections for database "ledger"',
        "remaining connection slots are reserved for non-replication superuser connections",
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
    ],
)
def test_every_way_a_full_postgresql_turns_a_connection_away_is_waited_for(said: str) -> None:
    """A server at its connection limit (other clients restarting, a pooler that has not let
    go yet) frees a slot as they end: a starting gateway waits for it as for a server still
    starting, instead of exiting at once (and meeting systemd's restart limit)."""
    from ollama_meter.cli._waiting import unreachable
    from ollama_meter.errors import LedgerError

    failure = f'connection to server at "127.0.0.1", port 5432 failed: FATAL:  {said}'
    assert unreachable(LedgerError(f"cannot open the ledger at postgresql://x/y: {failure}"))


def test_a_gateway_starting_while_its_database_server_is_full_waits_for_a_free_slot(
    pg_server: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ometer serve`` exited at once when the server answered "too many connections";
    it waits for a slot as it waits for a server that cannot be reached yet."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from ollama_meter.cli._common import ledger_for, settings
    from ollama_meter.cli._waiting import open_when_up

    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        conn.execute(text(f"CREATE DATABASE {role} OWNER {role}"))
    url = make_url(f"{pg_server}/{role}").set(username=role).render_as_string(False)
    monkeypatch.setenv("OMETER_DB_URL", url)
    said: list[str] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # meanwhile the other clients let go of their slots
        slept.append(seconds)
        with admin.connect() as conn:
            conn.execute(text(f"ALTER ROLE {role} CONNECTION LIMIT -1"))

    try:
        ledger = open_when_up(settings(), ledger_for, said.append, sleep=sleep)
        assert ledger.count() == 0 and slept == [1.0]
        assert said[0].startswith("waiting for the database server: ")
        assert f'too many connections for role "{role}"' in said[0]
        assert said[1:] == ["the database server answers: starting"]
        ledger.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {role} WITH (FORCE)"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
