"""A PostgreSQL ledger that stops answering without going away (SIGSTOP: its kernel still
takes and acknowledges every byte). Every wait on it is bounded by OMETER_LEDGER_WAIT; then
the spans go to the spool as for a locked or full ledger, a hard budget refuses, and once the
server runs again every span is in the ledger exactly once."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, text

from ollama_meter import MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import (
    Ledger,
    SpanFilter,
    close_ledgers,
    import_lines,
    prune,
    span_to_dict,
)
from ollama_meter.ledger._deadline import unbounded
from ollama_meter.meter import reprice
from ollama_meter.pricing import PriceBook
from ollama_meter.records import SpanRecord, Stored
from ollama_meter.testing import OllamaEmulator
from tests._pg import PgCluster
from tests.factories import make_span, token_prices

T = TypeVar("T")
HI = [{"role": "user", "content": "hello from the crm bot"}]
SILENT = (
    r"did not answer within [12] s \(OMETER_LEDGER_WAIT\): it is stopped, overloaded or cut off"
)
"""What a caller is told: 1 s for an answer, 2 s (libpq's least) for a new connection."""
HANG = 60.0
"""Seconds after which a wait is a hang: far beyond any deadline these tests set (1 s)."""


def quiet_passes() -> None:
    """Let the 1 s pass in which a server that went silent is not asked again."""
    time.sleep(1.1)


def returns(action: Callable[[], T]) -> T:
    """``action()``'s result; fails the test instead of hanging it when it does not return."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG)
    assert outcome, f"still waiting after {HANG:g} s: the wait has no bound"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@pytest.fixture
def cluster(module_cluster: PgCluster) -> PgCluster:
    """One private server for the module (a frozen server must not be the suite's)."""
    return module_cluster


@pytest.fixture
def url(cluster: PgCluster) -> str:
    from tests.conftest import _fresh_pg_database

    return _fresh_pg_database(cluster.url)


def in_ledger(url: str) -> list[tuple[str, int, int, int]]:
    """(id, input tokens, output tokens, cost) of every span, read by a fresh process' ledger."""
    ledger = Ledger(url)
    try:
        spans = ledger.latest(SpanFilter(), 100)
        return sorted((s.id, s.input_tokens, s.output_tokens, s.cost_total) for s in spans)
    finally:
        ledger.dispose()


def totals(url: str) -> tuple[int, int, int, int]:
    """(requests, input tokens, output tokens, cost) as reports read them (the rollups)."""
    ledger = Ledger(url)
    try:
        sums = ledger.spend(SpanFilter())
        return (
            sum(s.requests for s in sums),
            sum(s.input_tokens for s in sums),
            sum(s.output_tokens for s in sums),
            sum(s.cost for s in sums),
        )
    finally:
        ledger.dispose()


def row(span: SpanRecord) -> tuple[str, int, int, int]:
    return (span.id, span.input_tokens, span.output_tokens, span.cost_total)


def test_a_write_to_a_frozen_server_is_spooled_and_recorded_once_it_runs(
    cluster: PgCluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(url, wait=1)
    first, second, third, last = (
        make_span(input_tokens=n, output_tokens=2 * n, cost_tokens=1000 * n, cost_total=1000 * n)
        for n in (1, 2, 3, 4)
    )
    assert ledger.record([first]) == {first.id: Stored.COMMITTED}  # a pooled connection now
    with cluster.frozen(), caplog.at_level(logging.WARNING, "ollama_meter.ledger"):
        stored = returns(lambda: ledger.record([second, third]))
    assert stored == {second.id: Stored.SPOOLED, third.id: Stored.SPOOLED}
    assert len(ledger.spool.pending()) == 1
    said = [r.getMessage() for r in caplog.records if "kept them in" in r.getMessage()]
    assert len(said) == 1 and re.search(SILENT, said[0])
    # The server runs again: the next write succeeds and brings the spooled spans in.
    quiet_passes()
    assert ledger.record([last]) == {last.id: Stored.COMMITTED}
    assert ledger.spool.pending() == []
    ledger.dispose()
    assert in_ledger(url) == sorted(row(s) for s in (first, second, third, last))
    assert totals(url) == (4, 10, 20, 10_000)


def test_a_commit_the_server_takes_as_it_freezes_counts_once(cluster: PgCluster, url: str) -> None:
    """The ambiguous case: COMMIT sent, no answer. The spans are spooled; the frozen server,
    resumed, reads the COMMIT still in its socket and commits too. Recording is idempotent:
    the drain adds nothing, and the rollups count each span once."""
    ledger = Ledger(url, wait=1)
    ledger.record([make_span(input_tokens=1, cost_tokens=1000, cost_total=1000)])
    freezing = contextlib.ExitStack()

    def freeze_before_commit(_conn: Any) -> None:
        freezing.enter_context(cluster.frozen())

    span = make_span(input_tokens=5, output_tokens=6, cost_tokens=7000, cost_total=7000)
    event.listen(ledger.engine, "commit", freeze_before_commit, once=True)
    with freezing:
        assert returns(lambda: ledger.record([span])) == {span.id: Stored.SPOOLED}
    assert len(ledger.spool.pending()) == 1
    quiet_passes()
    assert ledger.recover() == 1
    ledger.dispose()
    assert [r[0] for r in in_ledger(url)].count(span.id) == 1
    assert totals(url) == (2, 6, 18, 8000)


def test_the_python_api_answers_spools_and_refuses_what_a_budget_covers(
    cluster: PgCluster, url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    setup = Ledger(url)
    setup.add_price_rule(token_prices())
    setup.save_budget(
        Budget(tenant="acme", department="legal", period="month", limit=10**9, currency="USD")
    )
    setup.dispose()
    client = MeteredClient(emulator.url, db_url=url, tenant="acme", department="support")
    before = client.chat(model="llama3.1:8b", messages=HI, stream=False)
    with cluster.frozen():
        during = returns(lambda: client.chat(model="llama3.1:8b", messages=HI, stream=False))
        with pytest.raises(LedgerError) as refused:
            returns(
                lambda: client.chat(
                    model="llama3.1:8b", messages=HI, stream=False, department="legal"
                )
            )
    assert during.meter.status == "ok" and during.message.content
    assert str(refused.value).startswith(
        "the budget for acme/legal cannot be checked, so the call was not made: "
    )
    assert re.search(SILENT, str(refused.value))
    assert "\n" not in str(refused.value)
    assert len(emulator.requests_to("/api/chat")) == 2  # legal never reached Ollama
    ledger = client.meter.ledger
    assert len(ledger.spool.pending()) == 2  # support's answer and legal's refusal
    quiet_passes()
    assert ledger.recover() == 2
    client.close()
    spans = Ledger(url).latest(SpanFilter(), 10)
    assert sorted((s.department, s.status, s.error_type) for s in spans) == [
        ("legal", "error", "ledger_unavailable"),
        ("support", "ok", None),
        ("support", "ok", None),
    ]
    answered = {s.id: s for s in spans if s.department == "support"}
    assert set(answered) == {before.meter.id, during.meter.id}
    for meter in (before.meter, during.meter):
        span = answered[meter.id]
        assert (span.input_tokens, span.output_tokens) == (meter.input_tokens, meter.output_tokens)
        assert span.cost_total == int(meter.cost * 10**6) > 0


@contextlib.contextmanager
def every_connection_taken(ledger: Ledger) -> Iterator[None]:
    with contextlib.ExitStack() as held:
        for _ in range(30):  # the pool's 10 and its 20 overflow
            held.enter_context(ledger.read())
        yield


def test_a_pool_with_no_connection_free_spools_instead_of_losing_the_span(url: str) -> None:
    ledger = Ledger(url, wait=0.5)
    span = make_span()
    with every_connection_taken(ledger):
        assert returns(lambda: ledger.record([span])) == {span.id: Stored.SPOOLED}
        with pytest.raises(LedgerError, match=r"stayed busy for 0\.5 s \(OMETER_LEDGER_WAIT\)"):
            ledger.count()
    assert ledger.recover() == 1
    assert ledger.count() == 1
    ledger.dispose()


def test_an_answer_slower_than_the_wait_is_cut_except_for_maintenance(url: str) -> None:
    """The deadline cannot tell a frozen server from a statement that runs long: it cuts
    both (no ledger statement a call or report makes comes near it). Migrations and rollup
    rebuilds, which may rightly run for minutes, run unbounded."""
    ledger = Ledger(url, wait=0.5)
    with pytest.raises(LedgerError) as cut, ledger.read() as conn:
        conn.execute(text("SELECT pg_sleep(1)"))
    assert str(cut.value).startswith(f"the ledger at {ledger.display_url} failed: ")
    assert str(cut.value).endswith(
        "the server did not answer within 0.5 s (OMETER_LEDGER_WAIT): it is stopped, "
        "overloaded or cut off; spans wait in the spool meanwhile"
    )
    with unbounded(), ledger.read() as conn:
        assert conn.execute(text("SELECT pg_sleep(1), 7")).one()[1] == 7
    ledger.dispose()


def test_upkeep_over_many_spans_is_not_cut_by_a_calls_deadline(url: str) -> None:
    """Import, prune and re-pricing run statements over many spans (a 20,000-span batch):
    they may rightly take longer than a call's write, so they run unbounded, as migrations do.
    Each is given a statement slower than the wait, run where its own statements run."""
    ledger = Ledger(url, wait=0.5)

    def slow() -> None:
        with ledger.read() as conn:
            conn.execute(text("SELECT pg_sleep(0.8)"))

    with pytest.raises(LedgerError, match="did not answer within 0.5 s"):
        slow()  # a call's read: cut

    def lines() -> Iterator[bytes]:
        slow()
        yield json.dumps(span_to_dict(make_span())).encode()

    assert import_lines(ledger, lines()).added == 1
    book = PriceBook([token_prices()], tz=ZoneInfo("UTC"), currency="USD")
    summary = reprice(
        ledger, book, since=datetime(2026, 1, 1, tzinfo=UTC), progress=lambda _: slow()
    )
    assert sum(summary.after.values()) > 0
    assert prune(ledger, 1, now=datetime(2027, 1, 1, tzinfo=UTC)).removed == 1
    ledger.dispose()


def test_a_command_on_a_frozen_server_fails_in_one_line(
    cluster: PgCluster, url: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", url)
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "1")
    assert cli("report", "--period", "month").code == 0
    close_ledgers()  # the next command is a process of its own
    with cluster.frozen():
        # The CLI needs the main thread: without a bound it would wait until this resumes
        # the server, then succeed, and fail the asserts below.
        guard = threading.Timer(HANG, cluster.resume)
        guard.start()
        try:
            result = cli("report", "--period", "month")
        finally:
            guard.cancel()
    assert result.code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and re.search(SILENT, line) and "Traceback" not in line
