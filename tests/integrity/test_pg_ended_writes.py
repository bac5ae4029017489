"""A span write whose PostgreSQL session the server ended (``pg_terminate_backend``, a DBA's
or a pooler's; through PgBouncer too) at the worst moments: before its insert, after it and
before COMMIT, after COMMIT took effect and before its answer came back. The server answers
still: the write is made once more on a new session and the span is in the ledger now, once
(its rollups count it once), not in the spool until a later write brings it in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._plan import raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import Stored
from ollama_meter.reports import spend_report
from ollama_meter.testing import OllamaEmulator
from tests._pgbouncer import pgbouncer
from tests.factories import make_span
from tests.integrity.test_pg_pooler import _need_pgbouncer, _through

START = datetime(2026, 11, 10, 12, tzinfo=UTC)
BY = ["tenant", "department", "day"]
CHAT = {"model": "llama3.1:8b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def pooled(pg_server: str | None) -> Iterator[str]:
    with pgbouncer(_need_pgbouncer(pg_server), "transaction") as url:
        yield url


def _report(ledger: Ledger) -> tuple[list[Any], list[Any]]:
    """November's report from the rollups, and from the raw spans."""
    window = parse_period("2026-11", tz=UTC, now=START + timedelta(days=1))
    cells = spend_report(ledger, window, BY, tz=UTC).rows
    with raw_spans():
        return cells, spend_report(ledger, window, BY, tz=UTC).rows


def _ending(pg_url: str, times: int, moment: str, ended: list[int]) -> Callable[[Any], None]:
    """A hook that ends (``pg_terminate_backend``, from another session) the session it is
    called on, its first ``times`` times: ``before insert`` as the span's insert is sent,
    ``before commit`` once the insert is done and COMMIT is about to be sent, ``after commit``
    once the server committed (the COMMIT's answer lost with the session). Each session
    ended goes to ``ended``."""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")

    def end(conn: Any, *_: Any) -> None:
        if len(ended) >= times:
            return
        raw = conn.connection.dbapi_connection
        if moment == "after commit":
            raw.commit()  # the server has the span; the session then ends before ometer knows
        # (behind PgBouncer, the server's session this transaction is on)
        (pid,) = raw.execute("SELECT pg_backend_pid()").fetchone()
        with admin.connect() as other:
            gone = other.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
            assert gone.scalar() is True
        ended.append(pid)

    return end


def _hooked(ledger: Ledger, end: Callable[[Any], None], moment: str) -> None:
    if moment == "before insert":

        @event.listens_for(ledger.engine, "before_cursor_execute")
        def inserting(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO SPANS"):
                end(conn)

    else:
        event.listen(ledger.engine, "commit", end)


@pytest.mark.parametrize("through", ["server", "pgbouncer"])
@pytest.mark.parametrize("moment", ["before insert", "before commit", "after commit"])
def test_a_span_write_whose_session_the_server_ended_is_written_once_more_at_once(
    pg_url: str, request: pytest.FixtureRequest, through: str, moment: str
) -> None:
    """Each went to the spool ("could not write 1 span(s) ...: terminating connection due to
    administrator command", or through PgBouncer "received 2 results from command 'COMMIT'"),
    in the ledger only once a later write, or an idle gateway's next try, brought it in."""
    Ledger(pg_url).dispose()
    url = _through(request.getfixturevalue("pooled"), pg_url) if through == "pgbouncer" else pg_url
    ledger = Ledger(url, zone="UTC")
    try:
        ended: list[int] = []
        _hooked(ledger, _ending(pg_url, 1, moment, ended), moment)
        span = make_span(started_at=START, input_tokens=1000, cost_total=1234, cost_tokens=1234)
        assert ledger.record([span]) == {span.id: Stored.COMMITTED}
        assert not ledger.kept_aside
        assert ledger.spool.pending() == []
        cells, raw = _report(ledger)
        assert [(r.requests, r.input_tokens, r.cost) for r in cells] == [(1, 1000, 1234)]
        assert cells == raw
        assert ledger.count() == 1
        assert len(ended) == 1
    finally:
        ledger.dispose()


def test_a_span_write_whose_session_is_ended_each_time_is_spooled_after_one_more(
    pg_url: str,
) -> None:
    """Ended twice, the write gives up and the span waits in the spool (a server that ends
    every session is away); the next write brings it in, once."""
    Ledger(pg_url).dispose()
    ledger = Ledger(pg_url, zone="UTC")
    try:
        ended: list[int] = []
        _hooked(ledger, _ending(pg_url, 2, "before commit", ended), "before commit")
        span = make_span(started_at=START, input_tokens=1000, cost_total=1234, cost_tokens=1234)
        assert ledger.record([span]) == {span.id: Stored.SPOOLED}
        assert ledger.count() == 0
        assert len(ended) == 2
        later = make_span(started_at=START, input_tokens=10, cost_total=1, cost_tokens=1)
        assert ledger.record([later]) == {later.id: Stored.COMMITTED}
        cells, raw = _report(ledger)
        assert [(r.requests, r.input_tokens, r.cost) for r in cells] == [(2, 1010, 1235)]
        assert cells == raw
    finally:
        ledger.dispose()


@pytest.mark.parametrize("behind", [True, False], ids=["write-behind", "own commit"])
def test_a_gateway_call_whose_span_write_session_the_server_ended_is_in_the_ledger_at_once(
    pg_url: str, emulator: OllamaEmulator, app_on: Any, behind: bool
) -> None:
    """A gateway's call, its span committed by the write-behind thread, or by the call
    itself (its write-behind full; here stopped), the commit's session ended as the span's
    insert is sent: the span is in the ledger once the commit is done, none in the spool."""
    Ledger(pg_url).dispose()
    gw = app_on(emulator.url, pg_url)
    if not behind:
        assert gw.meter.behind is not None and gw.meter.behind.stop(60)
    ended: list[int] = []
    _hooked(gw.meter.ledger, _ending(pg_url, 1, "before insert", ended), "before insert")
    answer = gw.client.post("/api/chat", json=CHAT)
    assert answer.status_code == 200, answer.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert span.id == answer.headers["x-ometer-span-id"]
    assert (len(ended), gw.meter.ledger.kept_aside, gw.meter.ledger.spool.pending()) == (
        1,
        False,
        [],
    )
