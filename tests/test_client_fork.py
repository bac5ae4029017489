"""A client made before ``os.fork()`` and used on both sides (gunicorn ``--preload``,
multiprocessing's fork start method, celery's prefork pool).

The child inherits the parent's sockets, locks and files as they were at the fork. Its
calls must be its own: own connections to Ollama and the ledger, own journal, and no
lock or commit in progress that belonged to a parent's thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter, close_ledgers
from ollama_meter.testing import OllamaEmulator, expected_reply
from ollama_meter.upstream._resilience import CircuitBreaker

MODEL = "llama3.1:8b"
HANG = 60.0
"""Seconds after which a child that has not answered is taken as hung (a deadlock guard)."""

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def said(who: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"this is the {who} speaking"}]


def forked(work: Callable[[], Any]) -> tuple[int, Callable[[], Any]]:
    """Run ``work`` in a forked child; its pid, and a function that waits for its result.

    The child never returns into pytest: it sends ``work()`` (JSON) or the exception's repr
    up a pipe and leaves with ``os._exit``, as multiprocessing's children do."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            try:
                out = {"result": work()}
            except BaseException as exc:
                out = {"error": repr(exc)}
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)

    def result() -> Any:
        try:
            ready, _, _ = select.select([read], [], [], HANG)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child did not finish within {HANG} s: it hangs")
            data = b""
            while chunk := os.read(read, 65536):
                data += chunk
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        out = json.loads(data or b'{"error": "the child died without a word"}')
        assert "error" not in out, out["error"]
        return out["result"]

    return pid, result


@pytest.fixture
def client(sqlite_url: str, emulator: OllamaEmulator) -> Iterator[MeteredClient]:
    with MeteredClient(department="sales", tenant="acme", db_url=sqlite_url) as metered:
        yield metered


def test_a_child_and_its_parent_each_get_their_own_answer(
    client: MeteredClient, emulator: OllamaEmulator
) -> None:
    """The parent's kept-alive connection to Ollama is the parent's: a child that wrote its
    request on it too read the parent's answer (a reply meant for someone else) or sent
    Ollama a request spliced into the parent's (400)."""
    client.chat(model=MODEL, messages=said("warm-up"))  # leaves a connection in the pool
    emulator.latency = 0.3  # both requests are in flight at once

    def child() -> str:
        return str(client.chat(model=MODEL, messages=said("child")).message.content)

    _, child_reply = forked(child)
    parent_reply = client.chat(model=MODEL, messages=said("parent")).message.content
    assert (parent_reply, child_reply()) == (
        expected_reply(MODEL, said("parent")).content,
        expected_reply(MODEL, said("child")).content,
    )
    spans = client.meter.ledger.latest(SpanFilter(), 10)
    assert sorted(s.status for s in spans) == ["ok", "ok", "ok"]


def test_a_child_forked_while_a_thread_commits_commits_its_own_spans(
    client: MeteredClient, tmp_path: Path
) -> None:
    """A fork taken while another thread of the parent commits a span.

    The child's copy of the writer said a commit was running, one no thread of the child
    would ever end: its first call waited for ever. And SQLite keeps a process's locks
    on a file in structures all its connections share: the child inherited the lock the
    thread was taking, and every write of the child waited 5 s, then went to the spool.
    The fork now waits for the commit (``OMETER_LEDGER_WAIT`` at most)."""
    client.chat(model=MODEL, messages=said("warm-up"))
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the parent's commit waits for this lock
    parent = threading.Thread(
        target=client.chat, kwargs={"model": MODEL, "messages": said("parent's thread")}
    )
    ledger = client.meter.ledger
    parent.start()

    def unblock_once_the_fork_waits() -> None:
        while not ledger._forking:
            threading.Event().wait(0.01)
        blocker.execute("ROLLBACK")

    unblocker = threading.Thread(target=unblock_once_the_fork_waits)
    try:
        # The thread is inside its commit once it holds a connection: its writer says it
        # commits a moment before it takes one, and a fork in that moment (a loaded machine)
        # waited for no one, so the child inherited the blocker's lock (2 spans, not 4).
        while not (client.meter.writer._committing and ledger._in_use):
            parent.join(0.01)
        unblocker.start()

        def child() -> list[tuple[str, str]]:
            spans = [client.chat(model=MODEL, messages=said(f"child {n}")).meter for n in (1, 2)]
            return [(s.id, s.status) for s in spans if s is not None]

        _, child_result = forked(child)
        unblocker.join()
    finally:
        blocker.close()
    parent.join()
    mine = child_result()
    assert [status for _, status in mine] == ["ok", "ok"]
    statuses = {s.id: s.status for s in client.meter.ledger.latest(SpanFilter(), 10)}
    assert len(statuses) == 4 and all(statuses[i] == "ok" for i, _ in mine)
    assert not client.meter.ledger.spool.pending()  # committed, not spooled


def test_a_call_a_killed_child_had_in_flight_is_recorded_as_interrupted(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A child wrote its calls in the parent's journal: the parent, ending well, removed the
    file with the child's unfinished call in it, and that call Ollama received was lost."""
    client = MeteredClient(department="sales", tenant="acme", db_url=sqlite_url)
    client.chat(model=MODEL, messages=said("warm-up"))  # the parent's journal is open
    emulator.latency = HANG  # the child's call is in flight until it is killed
    pid, _ = forked(lambda: client.chat(model=MODEL, messages=said("child")).model_dump())
    while emulator.in_flight == 0:
        threading.Event().wait(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    emulator.latency = 0
    client.close()
    close_ledgers()  # the parent ends well: its journal is given up

    with MeteredClient(db_url=sqlite_url) as later:  # the next process that meters calls
        spans = later.meter.ledger.latest(SpanFilter(), 10)
    assert sorted((s.status, s.tenant, s.department) for s in spans) == [
        ("interrupted", "acme", "sales"),
        ("ok", "acme", "sales"),
    ]


def test_a_child_holds_none_of_its_parents_budget_leases(
    client: MeteredClient, emulator: OllamaEmulator
) -> None:
    """A hard budget's hold is a lease row per process: a child that kept the parent's lease
    in memory would admit against the parent's room, or rewrite (or give back) the parent's
    row while the parent's call still runs, and another process could spend that room."""
    from ollama_meter.budgets import Budget
    from tests.factories import token_prices

    ledger = client.meter.ledger
    ledger.add_price_rule(token_prices())
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    emulator.token_latency = 0.2
    try:
        stream = iter(client.chat(model=MODEL, messages=said("parent"), stream=True))
        next(stream)  # the parent's call is in flight: its lease row holds its bound
        gate = client.meter.budgets
        assert gate is not None
        parents = sorted(lease.row_id for lease in gate._leases.values())
        assert parents

        def child() -> dict[str, Any]:
            held_at_fork = len(gate._leases)
            client.chat(model=MODEL, messages=said("child"))
            with ledger.read() as conn:
                rows = sorted(
                    r[0] for r in conn.exec_driver_sql("SELECT id FROM budget_reservations")
                )
            return {"held_at_fork": held_at_fork, "rows": rows}

        _, result = forked(child)
        seen = result()
        emulator.hurry()  # the parent's reply need not run out at 0.2 s a token
        list(stream)
    finally:
        emulator.token_latency = 0.0
    assert seen["held_at_fork"] == 0
    assert set(parents) <= set(seen["rows"])  # the parent's hold stood through the child's call


def test_a_child_delivers_its_own_alerts(tmp_path: Path) -> None:
    """The alert thread was the parent's: in a child it was not there, yet the dispatcher
    took it as started, so the child's alerts waited in its queue and were never sent."""
    from datetime import UTC, datetime

    from ollama_meter.budgets import AlertDispatcher
    from ollama_meter.ledger import Ledger
    from ollama_meter.records import Alert

    class Noted:
        name = "noted"

        def __init__(self) -> None:
            self.sent: list[int] = []

        def send(self, alert: Alert) -> str:
            self.sent.append(alert.threshold)
            return "noted"

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    channel = Noted()
    dispatcher = AlertDispatcher(ledger, [channel])

    def fired(threshold: int) -> Alert:
        when = datetime(2026, 11, 1, tzinfo=UTC)
        alert = Alert(0, 1, "acme", None, "month", "2026-11", when, threshold, 5, 5, "USD")
        with ledger.budget_transaction() as store:
            alert_id = store.claim_alert(alert, when)
        assert alert_id is not None
        return dataclasses.replace(alert, id=alert_id)

    dispatcher.dispatch(fired(50))
    assert dispatcher.flush(600.0) and channel.sent == [50]

    def child() -> list[int]:
        dispatcher.dispatch(fired(90))
        assert dispatcher.flush(600.0)
        return channel.sent

    _, result = forked(child)
    assert result() == [50, 90]


def test_a_killed_processs_budget_hold_is_given_back_when_its_call_is_recorded(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``kill -9`` of a process with a call in flight under a hard budget: the next process
    recorded the call as interrupted, charged, yet the dead process's lease kept holding the
    call's bound for 15 minutes (``RESERVATION_TTL``), so the call counted twice; near the
    limit ``ometer chat`` was refused with 'calls in flight hold 8.243000 more ... retry in a
    few seconds', for a call no longer in flight, and retrying did not help for 15 minutes."""
    from ollama_meter.budgets import Budget
    from tests.factories import token_prices

    client = MeteredClient(department="sales", tenant="acme", db_url=sqlite_url)
    ledger = client.meter.ledger
    ledger.add_price_rule(token_prices())
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    emulator.latency = HANG  # the child's call is in flight until it is killed
    pid, _ = forked(lambda: client.chat(model=MODEL, messages=said("child")).model_dump())
    while emulator.in_flight == 0:
        threading.Event().wait(0.01)
    with ledger.read() as conn:
        held = conn.exec_driver_sql("SELECT count(*) FROM budget_reservations").scalar()
    assert held == 1  # the child's lease
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    emulator.latency = 0
    client.close()
    close_ledgers()

    with MeteredClient(db_url=sqlite_url) as later:  # the next process that meters calls
        spans = later.meter.ledger.latest(SpanFilter(), 10)
        with later.meter.ledger.read() as conn:
            held = conn.exec_driver_sql("SELECT count(*) FROM budget_reservations").scalar()
    assert [s.status for s in spans] == ["interrupted"]
    assert held == 0


@pytest.mark.parametrize("child", ["closes it", "reads on"])
def test_a_stream_open_at_a_fork_is_read_and_recorded_by_the_parent_alone(
    sqlite_url: str, emulator: OllamaEmulator, child: str
) -> None:
    """A child forked while the parent read a stream has a copy of it. Closing its copy (as
    a child's exit does) recorded the parent's call as the child's abort, 2 tokens, and the
    parent's span of the whole answer was dropped as a second row of that id. Reading on, the
    child took the rest of the answer off the parent's connection, and the parent's call hung
    until its time-out. Now the child cannot read it, and records nothing of it."""
    from decimal import Decimal

    from ollama_meter import ValidationError
    from tests.factories import token_prices

    expected = expected_reply(MODEL, said("parent"))
    with MeteredClient(db_url=sqlite_url, upstream_timeout=10) as client:
        client.meter.ledger.add_price_rule(token_prices())
        stream = iter(client.chat(model=MODEL, messages=said("parent"), stream=True))
        parts = [next(stream), next(stream)]

        def in_the_child() -> str:
            if child == "closes it":
                stream.close()  # type: ignore[attr-defined]
                return ""
            with pytest.raises(ValidationError) as refused:
                next(stream)
            return str(refused.value)

        _, result = forked(in_the_child)
        said_in_child = result()
        parts += list(stream)
        spans = client.meter.ledger.latest(SpanFilter(), 10)
    if child == "reads on":
        assert said_in_child.startswith(f"this stream was opened by process {os.getpid()}, ")
    assert "".join(p.message.content or "" for p in parts) == expected.content
    cost = Decimal(expected.prompt_tokens * 1000 + expected.output_tokens * 2000) / 10**6
    assert [(s.id, s.status, s.input_tokens, s.output_tokens) for s in spans] == [
        (parts[-1].meter.id, "ok", expected.prompt_tokens, expected.output_tokens)
    ]
    assert parts[-1].meter.cost == cost


@pytest.mark.parametrize("holder", ["reloading the prices", "building a runtime part"])
def test_a_child_forked_while_a_thread_holds_a_lock_of_ours_has_it_free(holder: str) -> None:
    """A fork taken while a thread of the parent held a lock of ours left the child's copy
    held for ever: a multiprocessing pool forked while a thread called reloaded the prices
    (the lock held while the ledger is read), and a worker's first call waited for ever (one
    run in fifteen hung). What the lock guards is the child's to do again."""
    from ollama_meter._reloaded import Reloaded
    from ollama_meter._runtime import Runtime

    parent, inside, go_on = os.getpid(), threading.Event(), threading.Event()

    def load() -> str:
        if os.getpid() != parent:
            return "the child's"
        inside.set()
        go_on.wait()
        return "the parent's"

    prices = Reloaded(load, ttl=0, what="prices")  # read at every get
    parts = Runtime()
    work = prices.get if holder == "reloading the prices" else lambda: parts.shared("k", 1, load)
    held = threading.Thread(target=work)
    held.start()
    try:
        inside.wait()
        if holder == "reloading the prices":
            _, result = forked(prices.get)
        else:
            _, result = forked(lambda: parts.shared("k", 1, load))
        assert result() == "the child's"
    finally:
        go_on.set()
        held.join()


def test_a_child_forked_while_a_thread_exports_or_ends_a_span_exports_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Telemetry's locks were plain ones: a fork taken while a thread of the parent was inside
    one (ending a call's span, counting a span into the queue for a collector) left the
    child's copy held for ever, and its first metered call waited on it for ever."""
    from ollama_meter import load_settings
    from ollama_meter.records import make_storable
    from ollama_meter.telemetry._setup import Telemetry
    from ollama_meter.testing import unreachable_url
    from tests.factories import make_span

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{unreachable_url()}/v1/traces")
    telemetry = Telemetry(load_settings())
    observer, (exporter,) = telemetry.observer, telemetry.span_exporters

    def a_call() -> str:
        span = make_storable(make_span())
        observer.on_start(span)
        observer.on_end(span)
        return span.span_id

    try:
        for lock in (observer._lock, exporter._lock):  # as a thread of the parent inside it
            with lock:
                _, result = forked(a_call)
                assert len(result()) == 16
    finally:
        telemetry.shutdown()


def test_a_breaker_a_parents_thread_held_at_the_fork_admits_the_childs_calls() -> None:
    breaker = CircuitBreaker("http://127.0.0.1:11434")
    held, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with breaker._lock:  # the parent's thread is inside the breaker at the fork
            held.set()
            leave.wait(HANG)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(HANG)
    try:
        _, result = forked(lambda: breaker.admit(MODEL).model)
        assert result() == MODEL
    finally:
        leave.set()
        thread.join()
