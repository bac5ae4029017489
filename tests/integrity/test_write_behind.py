"""Write-behind: the gateway answers once a call's span is whole in its journal, and commits
it right after. A locked database no longer holds the answers; a kill between the answer
and the commit loses no span; a stop commits them all."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import Journal
from ollama_meter.ledger._spool import span_json
from ollama_meter.meter import Attribution, Meter, _behind as behind_module
from ollama_meter.meter._behind import WriteBehind
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.meter._request import Opening, RequestFacts, facts_of
from ollama_meter.records import SpanRecord, make_storable
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests._committed import unsettled
from tests._otlp import OtlpHttpReceiver, metric_points, spans as otlp_spans
from tests.factories import make_span, opened
from tests.gateway.test_processes import logged, start_gateway
from tests.integrity.test_isolation import hostile_text
from tests.integrity.test_journal_lines import _no_prices
from tests.ledger.test_rollups import spans

HI = [{"role": "user", "content": "hello from the crm bot"}]


@st.composite
def finished_spans(draw: st.DrawFn) -> SpanRecord:
    """A span as a call ends it: any user, tags and captured text, made storable."""
    span = draw(spans())
    span.user = draw(
        st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,40}", fullmatch=True)
    )
    span.tags = draw(st.dictionaries(hostile_text, hostile_text, max_size=3))
    span.prompt, span.reply = draw(st.none() | hostile_text), draw(st.none() | hostile_text)
    make_storable(span)
    return span


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(span=finished_spans())
def test_a_span_a_dead_process_answered_before_its_commit_is_recorded_as_it_was(
    sqlite_url: str, tmp_path_factory: pytest.TempPathFactory, span: SpanRecord
) -> None:
    with opened(sqlite_url) as ledger:
        writer = Journal(tmp_path_factory.mktemp("journal"))
        writer.opened(span, 3)
        assert writer.finished(span)
        # the file as a killed process leaves it: nobody holds its lock
        assert writer._path is not None
        ledger.journal.directory.mkdir(parents=True, exist_ok=True)
        dead = ledger.journal.directory / f"9-{span.id}.journal"
        shutil.copy(writer._path, dead)
        writer.close()
        assert ledger.recover() == 1  # what opening the ledger does
        assert not dead.exists()
        # Every example's span stays in the one ledger: read them all, not the latest 100 (past
        # 100 examples an earlier started_at was not among them)
        (stored,) = [s for s in ledger.latest(SpanFilter(), ledger.count()) if s.id == span.id]
        assert span_json(stored) == span_json(span)
        assert ledger.recover() == 0  # once


def test_a_journal_with_calls_still_open_stays_for_the_meter_which_counts_each_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Opening the ledger records the answered span and leaves the file (it also notes a
    call in flight, which needs prices); the meter's recovery then records the call in flight
    as interrupted, and the answered one again, which adds nothing."""
    ledger = Ledger(sqlite_url)
    answered, in_flight = make_span(), make_span()
    writer = Journal(tmp_path)
    writer.opened(answered, 3)
    writer.opened(in_flight, 5)
    assert writer.finished(answered)
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    dead = ledger.journal.directory / "9-x.journal"
    shutil.copy(writer._path, dead)
    assert ledger.recover() == 1
    assert dead.exists()
    assert recover_interrupted(ledger, _no_prices) == 1
    assert not dead.exists()
    stored = {s.id: s for s in ledger.latest(SpanFilter(), 100)}
    assert len(stored) == 2
    assert stored[answered.id].status == answered.status
    assert (stored[in_flight.id].status, stored[in_flight.id].input_tokens) == ("interrupted", 5)


def test_a_locked_database_holds_no_answer_and_a_kill_before_the_commit_loses_no_span(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """With the ledger locked by another writer, every call is answered at once (before,
    each waited for the lock); ``kill -9`` then leaves the spans only in the journal, and
    the next ``ometer`` to open the ledger records each as it was."""
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}", "OMETER_LEDGER_WAIT": "300"}
    proc, url = start_gateway(env, emulator.url)
    client = ollama.Client(host=url, timeout=60)
    client.chat(model="llama3.1:8b", messages=HI)  # the ledger made, prices read
    locker = sqlite3.connect(db, isolation_level=None)
    deadline = time.monotonic() + 60
    while locker.execute("SELECT count(*) FROM spans").fetchone() != (1,):  # its commit
        assert time.monotonic() < deadline, "the first call's span was never committed"
        time.sleep(0.01)
    try:
        locker.execute("BEGIN IMMEDIATE")  # every commit of the gateway waits for this
        for i in range(6):
            if i % 2:
                list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
            else:
                client.chat(model="llama3.1:8b", messages=HI)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    journals = tmp_path / "l.db.spool" / "journal"
    assert len(unsettled(journals)) == 6
    spans = logged(env)  # `ometer log` opens the ledger: the dead gateway's spans go in
    assert len(spans) == 7
    assert {s["status"] for s in spans} == {"ok"}
    prompt, reply = expected_counts("llama3.1:8b", HI)
    assert {(s["input_tokens"], s["output_tokens"]) for s in spans} == {(prompt, reply)}
    assert not list(journals.glob("*.journal"))


def test_a_stopping_gateway_commits_every_answered_span_first(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    proc, url = start_gateway(env, emulator.url)
    client = ollama.Client(host=url, timeout=60)
    threads = [
        threading.Thread(target=client.chat, kwargs={"model": "llama3.1:8b", "messages": HI})
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert unsettled(tmp_path / "l.db.spool" / "journal") == []
    reader = sqlite3.connect(db)  # no ometer: opening one would record what the journal kept
    assert reader.execute("SELECT count(*) FROM spans WHERE status = 'ok'").fetchone() == (8,)
    reader.close()


def test_calls_commit_before_answering_once_too_many_wait(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Past the most spans that may wait, a call's close commits its own span (the caller
    feels the database's pace, memory stays bounded); under it, close only queues."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter, most=2)  # the one being committed counts
    assert meter.behind is behind
    blocker = threading.Event()
    committing = threading.Event()
    commit = behind._commit

    def slow_commit(calls: Any) -> None:
        committing.set()
        blocker.wait(30)
        commit(calls)

    behind._commit = slow_commit  # type: ignore[method-assign]
    try:
        first = meter.open(_opening())
        assert meter.close_now(first)  # queued: the thread takes it and waits
        assert committing.wait(10)
        second = meter.open(_opening())
        assert meter.close_now(second)  # waits behind the first
        third = meter.open(_opening())
        assert not meter.close_now(third)  # two not committed: no room
        assert third.stored is None and not third.behind
        blocker.set()
        meter.close(third)  # commits its own
        assert third.stored == "committed" and not third.behind
        assert behind.settle(30)
        assert first.stored == second.stored == "committed"
        assert meter.ledger.count() == 3
    finally:
        blocker.set()
        behind.stop(30)
    assert meter.behind is None
    fourth = meter.open(_opening())
    assert not meter.close_now(fourth)


def test_calls_ending_close_together_commit_in_one_transaction_with_the_same_rows(
    sqlite_url: str, emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A commit begins ``gather`` seconds after the last one began at the soonest: the calls
    ending meanwhile share it, and the ledger holds the same rows as with a transaction a
    call. Waiting for the commits (a settle) or a stop does not wait out the gathering."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter, gather=3600)
    batches: list[list[str]] = []
    commit = behind._commit

    def noted(calls: Any) -> None:
        batches.append([span.id for span, _ in calls])
        commit(calls)

    behind._commit = noted  # type: ignore[method-assign]
    calls = [meter.open(_opening(f"call {n}")) for n in range(6)]
    try:
        assert meter.close_now(calls[0])  # after a quiet spell: committed at once
        assert behind.settle(30)
        for call in calls[1:4]:
            assert meter.close_now(call)  # the last commit began just now: they wait
        assert behind.settle(30)  # and go together, at once
        for call in calls[4:]:
            assert meter.close_now(call)
    finally:
        assert behind.stop(30)  # commits the waiting ones without waiting out the hour
    ids = [call.span.id for call in calls]
    assert batches == [ids[:1], ids[1:4], ids[4:]]
    assert all(call.stored == "committed" for call in calls)
    one_by_one = Ledger(f"sqlite:///{tmp_path / 'one-by-one.db'}")
    for span in meter.ledger.latest(SpanFilter(), limit=10):
        one_by_one.record([span])
    assert _rows(sqlite_url) == _rows(one_by_one.url)


def test_calls_ending_while_a_commit_gathers_do_not_wake_its_thread(
    sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a commit the committing thread wakes by itself once the gathering time is up:
    a call ending meanwhile queues its span without waking it. Woken by the first such call,
    the thread took the GIL back from the event loop before that call's last write, once a
    commit. A call after a quiet spell still wakes it: committed at once."""
    woken: list[str] = []

    class Counted(threading.Condition):
        def notify(self, n: int = 1) -> None:  # (notify_all's too: the thread's own, not counted)
            if threading.current_thread().name != "ometer-write-behind":
                woken.append(threading.current_thread().name)
            super().notify(n)

    # Its own condition counts the wake-ups (the thread, and all else, as they were).
    monkeypatch.setattr(
        behind_module, "threading", SimpleNamespace(Condition=Counted, Thread=threading.Thread)
    )
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter, gather=3600)
    monkeypatch.undo()
    calls = [meter.open(_opening(f"call {n}")) for n in range(4)]
    try:
        assert meter.close_now(calls[0])  # after a quiet spell: the thread is woken
        for _ in range(1000):  # committed, and the commit's end noted
            if calls[0].stored == "committed" and behind._held == 0:
                break
            time.sleep(0.01)
        assert woken == ["MainThread"]
        for call in calls[1:]:
            assert meter.close_now(call)
        assert woken == ["MainThread"]  # none of them woke it
        assert [call.stored for call in calls[1:]] == [None, None, None]
    finally:
        assert behind.stop(30)
    assert all(call.stored == "committed" for call in calls)


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the spans and the rollups, sorted."""
    reader = sqlite3.connect(url.removeprefix("sqlite:///"))
    tables = ("spans", "rollups", "rollup_histograms", "rollup_busy", "rollup_busy_cells")
    try:
        return {name: sorted(reader.execute(f"SELECT * FROM {name}")) for name in tables}
    finally:
        reader.close()


def _opening(prompt: str = "") -> Opening:
    """A chat call of ``prompt`` (its tokens, estimated, are its cost: no Ollama answers it)."""
    facts = RequestFacts(prompt_text=prompt, prompt_bytes=len(prompt.encode()))
    return Opening("chat", "llama3.1:8b", False, Attribution("acme", "sales"), facts)


def test_the_journal_refuses_a_whole_span_for_a_call_it_never_opened(tmp_path: Path) -> None:
    """Nothing would recover it: such a span is committed before its answer."""
    journal = Journal(tmp_path)
    assert not journal.finished(make_span())


def test_calls_commit_before_answering_once_the_waiting_ones_hold_too_much_text(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """2,000 waiting calls with a megabyte of prompt each held 2 GB until the database took
    their spans: past a size, calls commit their own before answering."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter, most=1000, most_bytes=1000)
    blocker = threading.Event()
    commit = behind._commit
    behind._commit = lambda calls: (blocker.wait(30), commit(calls))  # type: ignore[method-assign]
    big = RequestFacts(prompt_text="x" * 1500, prompt_bytes=1500)
    try:
        first = meter.open(Opening("chat", "llama3.1:8b", False, Attribution("acme", "sales"), big))
        assert meter.close_now(first)
        second = meter.open(_opening())
        assert not meter.close_now(second)  # 1,500 characters wait already
        blocker.set()
        assert behind.settle(30)
        assert meter.close_now(second)  # room again
        assert behind.settle(30)
        assert (first.stored, second.stored) == ("committed", "committed")
    finally:
        blocker.set()
        behind.stop(30)


def test_a_call_that_never_reached_ollama_commits_before_its_answer(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A call refused while it waited in the gateway's queue was never journaled: nothing
    would recover its span after a kill, so its close commits it (from a thread), never
    on the event loop."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    behind = WriteBehind(meter)
    try:
        queued = meter.open(
            Opening("chat", "llama3.1:8b", False, Attribution("acme", "sales"), queued=True)
        )
        assert not meter.close_now(queued)
        assert queued.stored is None and not queued.behind  # nothing done
        meter.close(queued)
        assert queued.stored == "committed" and not queued.behind
        sent = meter.open(
            Opening("chat", "llama3.1:8b", False, Attribution("acme", "sales"), queued=True)
        )
        meter.sending(sent)  # journaled as it leaves for Ollama
        assert meter.close_now(sent) and sent.behind
        assert behind.settle(30) and sent.stored == "committed"
    finally:
        behind.stop(30)


def test_a_rotated_journal_keeps_the_answered_spans_not_yet_committed(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is rewritten with only its open calls once it grows: an answered span not
    yet committed is one of them, whole, not the line that opened it."""
    from ollama_meter.ledger import _journal

    monkeypatch.setattr(_journal, "ROTATE_BYTES", 2_000)
    ledger = Ledger(sqlite_url)
    writer = Journal(tmp_path)
    answered = [make_span(input_tokens=n, output_tokens=2 * n) for n in range(1, 9)]
    for span in answered:
        writer.opened(span, 3)
        assert writer.finished(span)
    first = writer._path
    writer.closed([span.id for span in answered[:6]])  # committed: past 2,000 bytes, a rotation
    assert writer._path is not None and writer._path != first and not first.exists()
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(writer._path, ledger.journal.directory / "9-rotated.journal")
    assert ledger.recover() == 2
    stored = {s.id: s for s in ledger.latest(SpanFilter(), 100)}
    assert {i: span_json(s) for i, s in stored.items()} == {
        s.id: span_json(s) for s in answered[6:]
    }


def test_a_call_a_dead_process_left_open_is_exported_as_it_is_recorded(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call its process died in (``kill -9``, a pool's SIGTERM mid-call) is recorded as
    interrupted by the next process, charged its prompt; it never reached the collector, nor
    the cost metrics: the process that made it never ended its span, and the one that
    recorded it exported nothing. It is exported as recorded, with the row's ids."""
    ledger = Ledger(sqlite_url)
    in_flight = make_span(request_model="llama3.1:8b", operation="chat")
    writer = Journal(tmp_path)
    writer.opened(in_flight, 5)
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(writer._path, ledger.journal.directory / "9-x.journal")
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        telemetry = Telemetry(load_settings())
        assert recover_interrupted(ledger, _no_prices, [telemetry.observer]) == 1
        assert telemetry.flush()
        telemetry.shutdown()
        (got,) = otlp_spans(rx)
        requests = metric_points(rx)[sc.METRIC_REQUESTS]
    (stored,) = ledger.latest(SpanFilter(), 10)
    assert stored.status == "interrupted"
    assert got.name == "chat llama3.1:8b"
    assert (got.trace_id, got.span_id) == (stored.trace_id, stored.span_id)
    assert {point.value for point in requests} == {1}  # cumulative: each export says 1


def test_who_said_what_counts_in_what_the_waiting_calls_hold(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """With content capture on, a span keeps each message's role and its texts' lengths (to
    export the conventions' messages): 6.3 MB for a body of 100,000 one-letter messages, whose
    prompt is 200,000 characters. Only the characters counted toward the bound, so waiting
    calls held 30 times what it allows. Now that record counts too."""
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator.url)
    meter = Meter.from_settings(settings, source="gateway")
    meter.capture_content = True
    behind = WriteBehind(meter, most=1000, most_bytes=1_000_000)
    blocker = threading.Event()
    commit = behind._commit
    behind._commit = lambda calls: (blocker.wait(30), commit(calls))  # type: ignore[method-assign]
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x"}] * 100_000}
    facts = facts_of("chat", body)
    assert len(facts.prompt_text) < 1_000_000 // 4  # the characters alone are far within
    try:
        first = meter.open(Opening("chat", "llama3.1:8b", False, Attribution("acme", "s"), facts))
        assert len(first.span.said) == 100_000
        assert meter.close_now(first)
        second = meter.open(_opening())
        assert not meter.close_now(second)  # what the first keeps waits already
        blocker.set()
        assert behind.settle(30)
        assert meter.close_now(second)
        assert behind.settle(30)
    finally:
        blocker.set()
        behind.stop(30)
