"""The ledger on SQLite and PostgreSQL: schema, migrations, writes, price rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace as replace_span
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from ollama_meter.errors import LedgerError, PricingError
from ollama_meter.ledger import HEAD_REVISION, Ledger, SpanFilter, current_revision
from ollama_meter.ledger.models import METADATA
from ollama_meter.meter import GroupCommitWriter
from ollama_meter.pricing import PriceRule
from ollama_meter.records import SpanRecord, Stored
from tests._templates import LedgerTemplates
from tests.factories import make_span

ROOT = Path(__file__).resolve().parents[2]


def downgrade(ledger: Ledger, revision: str) -> None:
    """Take ``ledger`` back to ``revision`` with the migrations' own downgrades."""
    from alembic import command

    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    with ledger.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
        conn.commit()


def test_head_revision_constant_matches_the_migrations() -> None:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_first_use_migrates_and_models_match_migrations(db_url: str) -> None:
    ledger = Ledger(db_url)
    assert current_revision(ledger.engine) == HEAD_REVISION
    assert {"spans", "price_rules", "alembic_version"} <= set(
        inspect(ledger.engine).get_table_names()
    )
    with ledger.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), METADATA
        )
    assert diff == []
    # opening again is a no-op
    assert current_revision(Ledger(db_url).engine) == HEAD_REVISION


def test_upgrading_from_0003_marks_stored_durations_as_reported(db_url: str) -> None:
    from sqlalchemy import text

    from ollama_meter.ledger import upgrade
    from ollama_meter.ledger._engine import create_ledger_engine

    engine = create_ledger_engine(db_url)
    upgrade(engine, "0003")
    columns = (
        "id, trace_id, span_id, started_at, tenant, department, source, operation, "
        "upstream_host, request_model, stream, status, input_tokens, output_tokens, "
        "token_source, eval_duration_ns, cost_tokens, cost_compute, cost_energy, cost_fee, "
        "cost_total, currency, unpriced, tags"
    )
    with engine.begin() as conn:
        for row_id, eval_ns in (("A", 2_000_000), ("B", None)):
            conn.execute(
                text(
                    f"INSERT INTO spans ({columns}) VALUES (:id, 't', 's', '2026-11-01 10:00:00', "
                    "'acme', 'sales', 'cli', 'chat', 'h', 'm', false, 'ok', 1, 1, 'reported', "
                    ":eval, 0, 0, 0, 0, 0, 'USD', true, '{}')"
                ),
                {"id": row_id, "eval": eval_ns},
            )
    engine.dispose()
    ledger = Ledger(db_url)  # opening migrates to the head
    assert current_revision(ledger.engine) == HEAD_REVISION
    with ledger.read() as conn:
        sources = dict(conn.execute(text("SELECT id, duration_source FROM spans")).all())
    assert sources == {"A": "reported", "B": None}


def test_upgrading_from_0004_keeps_every_span_and_builds_its_rollups(db_url: str) -> None:
    from sqlalchemy import text

    from ollama_meter.ledger import upgrade
    from ollama_meter.ledger._aggregate import raw_spans
    from ollama_meter.ledger._engine import create_ledger_engine
    from ollama_meter.periods import parse_period
    from ollama_meter.reports import spend_report

    engine = create_ledger_engine(db_url)
    upgrade(engine, "0004")
    columns = (
        "id, trace_id, span_id, started_at, ended_at, tenant, department, source, operation, "
        "upstream_host, request_model, stream, status, input_tokens, output_tokens, "
        "token_source, cost_tokens, cost_compute, cost_energy, cost_fee, cost_total, currency, "
        "unpriced, tags"
    )
    times = [  # as SQLAlchemy wrote them before: text on SQLite, with and without fractions
        ("01A", "2026-10-31 23:30:00.250000", "2026-10-31 23:30:01.000001", "sales", 1_500),
        ("01B", "2026-11-15 08:00:00.000000", None, "sales", 2_500),
        ("01C", "1969-12-31 23:59:59.999999", "1970-01-01 00:00:00.500000", "ops", 7),
    ]
    with engine.begin() as conn:
        for row_id, started, ended, department, cost in times:
            conn.execute(
                text(
                    f"INSERT INTO spans ({columns}) VALUES (:id, 't', 's', :started, :ended, "
                    "'acme', :department, 'cli', 'chat', 'h', 'm', false, 'ok', 1, 1, 'reported', "
                    ":cost, 0, 0, 0, :cost, 'USD', false, '{}')"
                ),
                {
                    "id": row_id,
                    "started": started,
                    "ended": ended,
                    "department": department,
                    "cost": cost,
                },
            )
    engine.dispose()
    ledger = Ledger(db_url)  # migrates, then builds the rollups of what was there
    spans = {s.id: s for s in ledger.latest(SpanFilter(), 10)}
    assert spans["01A"].started_at == datetime(2026, 10, 31, 23, 30, 0, 250000, tzinfo=UTC)
    assert spans["01A"].ended_at == datetime(2026, 10, 31, 23, 30, 1, 1, tzinfo=UTC)
    assert spans["01B"].ended_at is None
    assert spans["01C"].started_at == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    window = parse_period("2026-11", tz=berlin, now=datetime(2026, 12, 1, tzinfo=UTC))
    report = spend_report(ledger, window, ["department"], tz=berlin)
    with raw_spans():
        assert report.rows == spend_report(ledger, window, ["department"], tz=berlin).rows
    assert [(r["department"], r["cost"], r["requests"]) for r in report.rows] == [
        ("sales", 4_000, 2)
    ]


def test_span_round_trip_keeps_every_field(db_url: str) -> None:
    ledger = Ledger(db_url)
    span = make_span(
        user="alice",
        tags={"job": "nightly"},
        ended_at=datetime(2026, 11, 10, 12, 0, 1, 250000, tzinfo=UTC),
        response_model="llama3.1:8b",
        status="error",
        error_type="stream_error",
        error_message="boom",
        http_status=200,
        done_reason="stop",
        token_source="estimated",
        total_duration_ns=9_000_000_000_000,
        load_duration_ns=1,
        latency_ns=5,
        ttft_ns=4,
        cost_tokens=31000,
        cost_compute=2,
        cost_energy=3,
        cost_fee=4,
        cost_total=31009,
        price_rule_id=7,
        unpriced=False,
    )
    ledger.record([span])
    (back,) = ledger.latest(SpanFilter(), 10)
    assert back == span
    assert back.started_at.tzinfo is UTC


def test_recording_twice_is_idempotent(db_url: str) -> None:
    ledger = Ledger(db_url)
    span = make_span()
    ledger.record([span])
    ledger.record([span, make_span()])
    assert ledger.count() == 2


def test_naive_datetimes_are_refused_and_set_aside(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    bad, good = make_span(started_at=datetime(2026, 11, 1)), make_span()
    assert ledger.record([bad, good]) == {bad.id: "quarantined", good.id: "committed"}
    assert ledger.count() == 1
    (kept,) = ledger.spool.quarantined()
    assert "naive datetime" in kept.read_text()


def test_filters_and_newest_first(db_url: str) -> None:
    ledger = Ledger(db_url)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    spans = [
        make_span(
            started_at=base + timedelta(minutes=i),
            department="sales" if i % 2 else "support",
            status="ok" if i % 3 else "error",
            response_model="qwen2.5:7b" if i == 4 else None,
        )
        for i in range(10)
    ]
    ledger.record(spans)
    latest = ledger.latest(SpanFilter(), 3)
    assert [s.id for s in latest] == [s.id for s in reversed(spans)][:3]
    assert {s.department for s in ledger.latest(SpanFilter(department="sales"), 50)} == {"sales"}
    assert len(ledger.latest(SpanFilter(status="error"), 50)) == 4
    assert [s.id for s in ledger.latest(SpanFilter(model="qwen2.5:7b"), 50)] == [spans[4].id]
    assert len(ledger.latest(SpanFilter(model="llama3.1:8b"), 50)) == 9
    window = SpanFilter(since=base + timedelta(minutes=2), until=base + timedelta(minutes=5))
    assert ledger.count(window) == 3


def test_price_rules_crud_and_exact_decimals(db_url: str) -> None:
    ledger = Ledger(db_url)
    saved = ledger.add_price_rule(
        PriceRule(
            pattern="llama3.1:*",
            currency="EUR",
            input_per_1m=Decimal("0.000000123456789"),
            gpu_hour=Decimal("3.60"),
            effective_from=date(2026, 11, 1),
        )
    )
    assert saved.id is not None
    (back,) = ledger.price_rules()
    assert back == saved
    assert back.input_per_1m == Decimal("0.000000123456789")
    ledger.remove_price_rule(saved.id)
    assert ledger.price_rules() == []
    with pytest.raises(PricingError, match="no price rule with id 999"):
        ledger.remove_price_rule(999)


def test_pricing_file_sync_replaces_only_on_change(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1)))
    rules = [PriceRule(pattern="a:*", currency="USD", input_per_1m=Decimal(2))]
    assert ledger.sync_price_rules("file:/p.toml", b"v1", lambda: rules) is True
    assert ledger.sync_price_rules("file:/p.toml", b"v1", lambda: rules) is False
    rules2 = [
        PriceRule(pattern="b:*", currency="USD", input_per_1m=Decimal(3)),
        PriceRule(pattern="c:*", currency="USD", input_per_1m=Decimal(4)),
    ]
    assert ledger.sync_price_rules("file:/p.toml", b"v2", lambda: rules2) is True
    assert sorted(r.pattern for r in ledger.price_rules()) == ["*", "b:*", "c:*"]


def test_group_commit_from_many_threads_loses_nothing(db_url: str) -> None:
    ledger = Ledger(db_url)
    writer = GroupCommitWriter(ledger)
    per_thread, threads = 50, 8
    batches: list[int] = []
    original = ledger.record

    def counting(spans: list) -> dict:  # type: ignore[type-arg]
        batches.append(len(spans))
        return original(spans)

    ledger.record = counting  # type: ignore[method-assign]
    workers = [
        threading.Thread(target=lambda: [writer.write(make_span()) for _ in range(per_thread)])
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert ledger.count() == per_thread * threads
    assert sum(batches) == per_thread * threads


def test_group_commit_reports_failure_to_every_waiter(sqlite_url: str) -> None:
    class Broken:
        def record(self, spans: list) -> None:  # type: ignore[type-arg]
            raise LedgerError("disk full")

    writer = GroupCommitWriter(Broken())
    with pytest.raises(LedgerError, match="disk full"):
        writer.write(make_span())


def test_group_commit_gathers_waiters_and_each_learns_its_own_batchs_outcome() -> None:
    batches: list[list[str]] = []
    gathered = threading.Event()

    class SlowSink:
        def record(self, spans: list) -> dict:  # type: ignore[type-arg]
            batches.append([s.id for s in spans])
            if len(batches) == 1:
                assert gathered.wait(60)  # the first commit lasts until the others wait
            if len(batches) > 1:
                raise LedgerError("disk full")
            return {s.id: Stored.COMMITTED for s in spans}

    writer = GroupCommitWriter(SlowSink())
    outcome: dict[str, str] = {}

    def one(span: SpanRecord) -> None:
        try:
            writer.write(span)
            outcome[span.id] = "ok"
        except LedgerError:
            outcome[span.id] = "failed"

    first, *others = [make_span() for _ in range(8)]
    workers = [threading.Thread(target=one, args=(span,)) for span in (first, *others)]
    workers[0].start()
    deadline = time.monotonic() + 60  # a busy machine: a wait, not a measure
    while batches != [[first.id]]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for w in workers[1:]:
        w.start()
    while len(writer._pending.spans) < 7:  # while the first batch commits, the others gather
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gathered.set()
    for w in workers:
        w.join()
    assert [batches[0], sorted(batches[1])] == [[first.id], sorted(s.id for s in others)]
    assert outcome == {first.id: "ok"} | {s.id: "failed" for s in others}


def test_an_interrupt_in_the_thread_leading_a_commit_is_that_threads_alone() -> None:
    """Ctrl-C lands in one thread: the spans it was committing for others are committed again."""
    batches: list[list[str]] = []
    writer: GroupCommitWriter

    class InterruptedSink:
        def record(self, spans: list) -> dict:  # type: ignore[type-arg]
            batches.append([s.id for s in spans])
            if len(batches) == 1:  # hold the first commit until two callers wait behind it
                while len(writer._pending.spans) < 2:
                    threading.Event().wait(0.01)
            elif len(batches) == 2:
                raise KeyboardInterrupt  # in whichever thread leads the waiters' batch
            return {s.id: Stored.COMMITTED for s in spans}

    writer = GroupCommitWriter(InterruptedSink())
    outcome: dict[str, str] = {}

    def one() -> None:
        span = make_span()
        try:
            outcome[span.id] = str(writer.write(span))
        except KeyboardInterrupt:
            outcome[span.id] = "interrupted"

    first = threading.Thread(target=one)
    first.start()
    while not batches:
        threading.Event().wait(0.01)
    waiters = [threading.Thread(target=one) for _ in range(2)]
    for w in waiters:
        w.start()
    for w in [*waiters, first]:
        w.join()
    assert len(batches[1]) == 2
    assert sorted(outcome.values()) == sorted([str(Stored.COMMITTED)] * 2 + ["interrupted"])
    assert batches[2:] == [
        [id_ for id_, result in outcome.items() if result != "interrupted" and id_ in batches[1]]
    ]


def test_unknown_driver_and_bad_url_are_clear() -> None:
    with pytest.raises(LedgerError, match="not a database URL"):
        Ledger("not a url")
    for url in ("mysql+nosuchdriver://x/y", "mysql://x/y", "oracle://x/y", "mssql+pyodbc://x"):
        # SQLAlchemy knows these databases; ometer's ledger is SQLite or PostgreSQL only
        with pytest.raises(LedgerError) as raised:
            Ledger(url)
        backend = url.split(":")[0].split("+")[0]
        assert str(raised.value) == (
            f"the ledger is kept in SQLite or PostgreSQL, not {backend}: give sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DATABASE"
        )
    with pytest.raises(LedgerError, match="pip install 'ollama-meter\\[postgres\\]'"):
        Ledger("postgresql+nosuchdriver://x/y")


def test_unwritable_folder_is_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LedgerError, match="cannot create the ledger folder"):
        Ledger(f"sqlite:///{blocker}/sub/ledger.db")


def test_a_locked_database_spools_and_the_next_open_records(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).dispose()
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ledger = Ledger(url, wait=0.05, retry_delay=0.001)
    spans = [
        make_span(),
        make_span(
            user="bob", tags={"k": "v"}, ended_at=datetime(2026, 11, 10, 12, 0, 1, tzinfo=UTC)
        ),
    ]
    ledger.record(spans)  # does not raise: the spans are kept
    (spooled,) = ledger.spool.pending()
    assert spooled.parent == tmp_path / "ledger.db.spool"
    blocker.execute("ROLLBACK")
    blocker.close()
    reopened = Ledger(url)
    assert reopened.spool.pending() == []
    assert sorted(reopened.latest(SpanFilter(), 10), key=lambda s: s.id) == sorted(
        spans, key=lambda s: s.id
    )
    assert reopened.recover() == 0


def test_spool_recovery_waits_while_the_database_is_still_locked(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, wait=0.05, retry_delay=0.001)
    ledger.spool.put([make_span()])
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    assert ledger.recover() == 0 and len(ledger.spool.pending()) == 1
    blocker.execute("ROLLBACK")
    assert ledger.recover() == 1 and ledger.count() == 1


def test_opening_retries_while_another_process_holds_a_fresh_file(tmp_path: Path) -> None:
    import sqlite3
    import threading

    path = tmp_path / "ledger.db"
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("CREATE TABLE placeholder (x INTEGER)")
    blocker.execute("DROP TABLE placeholder")  # a database with no tables, as sqlite3 leaves one
    blocker.execute("BEGIN EXCLUSIVE")  # not yet WAL: nobody can even read the file
    threading.Timer(0.3, lambda: (blocker.execute("ROLLBACK"), blocker.close())).start()
    # Opening waits (up to a second) for the 300 ms hold to end.
    ledger = Ledger(f"sqlite:///{path}", wait=1.0, retry_delay=0.05)
    ledger.record([make_span()])
    assert ledger.count() == 1


def test_opening_a_file_locked_for_good_is_one_clear_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE placeholder (x INTEGER)")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(
            LedgerError, match=r"^cannot open the ledger at .*database is locked"
        ) as e:
            Ledger(f"sqlite:///{path}", wait=0.05, retry_delay=0.001)
        assert "held it for longer than 0.05 s (OMETER_LEDGER_WAIT)" in str(e.value)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_spool_for_a_server_database_lives_in_the_data_dir() -> None:
    from ollama_meter.ledger._durable import default_spool_dir

    spool = default_spool_dir("postgresql+psycopg://u:p@db/ometer")
    assert spool.parent.name == "spool" and "ollama-meter" in str(spool)


def test_the_fast_span_insert_stores_what_the_core_insert_stores(db_url: str) -> None:
    from dataclasses import replace

    from sqlalchemy import insert, text

    from ollama_meter.ledger.models import SPANS
    from ollama_meter.records import new_span_row_id

    ledger = Ledger(db_url)
    full = make_span(
        user="bob",
        tags={"k": "v", "ünï": "ok"},
        ended_at=datetime(2026, 11, 10, 12, 0, 1, 250, tzinfo=UTC),
        cost_tokens=31_000,  # micro-units: 0.031000
        cost_total=31_000,
        price_rule_id=None,
        unpriced=False,
        error_message="a 'quoted' message",
        ttft_ns=123,
    )
    core = replace(full, id=new_span_row_id())
    ledger.record([full])  # the fast path
    with ledger.write() as conn:
        conn.execute(insert(SPANS), [core.as_row()])
    with ledger.read() as conn:
        rows = {
            row[0]: tuple(row[1:])
            for row in conn.execute(text("SELECT * FROM spans ORDER BY id")).all()
        }
    assert rows[full.id] == rows[core.id]
    read_back = {s.id: s for s in ledger.latest(SpanFilter(), 10)}
    assert replace(read_back[full.id], attributes={}) == replace(full, attributes={})
    ledger.record([full])  # recording again keeps one row
    assert ledger.count() == 2


def test_compiled_statements_are_kept_per_driver_and_parameter_style() -> None:
    """Two drivers of one database may mark parameters apart: SQL compiled for one is not the other's."""
    from sqlalchemy.dialects import postgresql, sqlite

    from ollama_meter.ledger._spans import _SpanInsert
    from ollama_meter.ledger._types import driver_key

    qmark, named = sqlite.dialect(), sqlite.dialect(paramstyle="named")
    assert driver_key(qmark) != driver_key(named)
    assert _SpanInsert(qmark).mark == "?"
    with pytest.raises(LedgerError, match="takes named parameters"):
        _SpanInsert(named)
    assert driver_key(postgresql.psycopg.dialect()) != driver_key(postgresql.psycopg2.dialect())


def test_upgrading_from_0006_adds_the_quarter_hour_timings_of_spans_already_there(
    db_url: str,
) -> None:
    """0007 keeps all calls' histograms per quarter hour: a ledger written before it gets
    them from the one rebuild the migration asks for, so timings per local day are exact."""
    from sqlalchemy import text

    from ollama_meter.ledger import prune
    from ollama_meter.ledger._aggregate import raw_spans
    from ollama_meter.periods import parse_period
    from ollama_meter.reports import perf_report

    berlin = ZoneInfo("Europe/Berlin")
    spans = [
        make_span(
            started_at=datetime(2026, 11, day, hour, 10, tzinfo=UTC),
            latency_ns=(day * 10 + hour) * 1_000_000,
            ttft_ns=hour * 1_000_000,
        )
        for day in (1, 2, 3)
        for hour in (0, 22, 23)  # before and after Berlin's midnight (23:00 UTC)
    ]
    ledger = Ledger(db_url)
    ledger.record(spans)
    downgrade(ledger, "0006")  # as 0006 left it: no quarter-hour timings, rollups current
    with ledger.read() as conn:
        assert not conn.execute(
            text("SELECT count(*) FROM rollup_histograms WHERE grain = 0")
        ).scalar()
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to 0007, which rebuilds the rollups once
    with ledger.read() as conn:
        quarters = conn.execute(text("SELECT count(*) FROM rollup_histograms WHERE grain = 0"))
        assert quarters.scalar() > 0
    window = parse_period("2026-11", tz=berlin, now=datetime(2026, 12, 1, tzinfo=UTC))
    report = perf_report(ledger, window, [], unit="day", tz=berlin)
    with raw_spans():
        expected = perf_report(ledger, window, [], unit="day", tz=berlin)
    assert report.rows == expected.rows
    assert len(report.rows) == 4  # Berlin's 1, 2, 3 and 4 November
    # Raw spans are no longer needed for it: pruned, the answer stays, without a warning.
    prune(ledger, 1, now=datetime(2026, 11, 20, tzinfo=UTC))
    after = perf_report(ledger, window, [], unit="day", tz=berlin)
    assert (after.rows, after.warnings) == (report.rows, [])


def test_upgrading_from_0008_sums_all_users_from_rollups_even_for_pruned_months(
    db_url: str,
) -> None:
    """0009 adds each cube row summed over users (user ``*``), made from the rollups
    there: a month whose raw spans were pruned answers as before, to the micro-unit."""
    from sqlalchemy import text

    from ollama_meter.ledger import prune
    from ollama_meter.periods import parse_period
    from ollama_meter.reports import spend_report

    spans = [
        make_span(
            started_at=datetime(2026, 10, day, hour, tzinfo=UTC),
            user=user,
            department=department,
            cost_total=1_000_001 * day + hour,
        )
        for day in (1, 15, 31)
        for hour in (0, 23)
        for user, department in (("ann", "legal"), ("bob", "legal"), (None, "sales"))
    ]
    ledger = Ledger(db_url)
    ledger.record(spans)
    utc = ZoneInfo("UTC")
    window = parse_period("2026-10", tz=utc, now=datetime(2026, 12, 1, tzinfo=UTC))
    before = [spend_report(ledger, window, by, tz=utc).rows for by in (["department"], ["user"])]
    prune(ledger, 1, now=datetime(2026, 11, 20, tzinfo=UTC))
    downgrade(ledger, "0008")  # rows per user only
    with ledger.read() as conn:
        assert not conn.execute(text("SELECT count(*) FROM rollups WHERE \"user\" = '*'")).scalar()
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to 0009 and on
    with ledger.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM rollups WHERE \"user\" = '*'")).scalar()
        assert conn.execute(text("SELECT count(*) FROM spans")).scalar() == 0
    after = [spend_report(ledger, window, by, tz=utc).rows for by in (["department"], ["user"])]
    assert after == before
    assert [(r["department"], r.cost) for r in after[0]] == [
        ("legal", 188_000_326),
        ("sales", 94_000_163),
    ]
    assert [(r["user"], r.cost) for r in after[1]] == [
        ("", 94_000_163),
        ("ann", 94_000_163),
        ("bob", 94_000_163),
    ]


def test_0010_overview_rows_fold_the_status_and_come_back_the_same_after_a_round_trip(
    db_url: str,
) -> None:
    """0010 keeps, beside each detail row, rows summed over user, status and error type,
    with errors and unpriced usage folded in; the key puts the user right after the
    cell, in a new ledger as in an upgraded one. Down to 0009 and up again gives back
    every row as it was."""
    from sqlalchemy import text

    from ollama_meter.ledger.models import ROLLUPS

    def key() -> list[str]:
        return inspect(ledger.engine).get_pk_constraint("rollups")["constrained_columns"]

    def rows(where: str = "1 = 1") -> list[tuple[object, ...]]:
        with ledger.read() as conn:
            return sorted(conn.execute(text(f"SELECT * FROM rollups WHERE {where}")).all())

    ledger = Ledger(db_url)
    model_key = [c.name for c in ROLLUPS.primary_key.columns]
    assert model_key[:3] == ["grain", "start", "user"] and key() == model_key
    failed = {"status": "error", "error_type": "timeout", "output_tokens": 0}
    nothing = {"input_tokens": 0, "output_tokens": 0}
    ledger.record(
        [
            make_span(user="ann", unpriced=True),
            make_span(user="bob", **failed, unpriced=True, input_tokens=0),
            make_span(user="bob", **failed, unpriced=False, input_tokens=2),
            make_span(status="rejected", error_type="budget_exceeded", **nothing, unpriced=True),
        ]
    )
    before = rows()
    overview = """ "user" = '*' AND grain = 2 """
    with ledger.read() as conn:
        summed = conn.execute(
            text(f"SELECT requests, errors, unpriced, unpriced_usage FROM rollups WHERE {overview}")
        ).all()
    assert [tuple(r) for r in summed] == [(4, 2, 3, 1)]  # ann's call is the unpriced usage
    assert len(rows(""" "user" = '*' """)) == 3  # one a grain: one department and model
    downgrade(ledger, "0009")
    assert key()[:5] == ["grain", "start", "tenant", "department", "user"]
    assert len(rows(""" "user" = '*' """)) == 3 * 3  # per status and error type, as 0009 had
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to the head again
    assert key() == model_key
    assert rows() == before


def test_0011_sums_busy_minutes_into_days_and_months_of_the_ledgers_zone(db_url: str) -> None:
    """0011 makes the busy cells from the busy minutes already there (not from raw spans,
    which may be pruned): the fixed-cost chargeback reads them and answers as before."""
    from sqlalchemy import text

    from ollama_meter.ledger import prune
    from ollama_meter.ledger._aggregate import raw_spans
    from ollama_meter.reports import chargeback

    def split() -> tuple[object, ...]:
        bill = chargeback(
            ledger, "2026-11", tz=berlin, now=now, currency="USD", fixed_cost=Decimal("3000")
        )
        return (bill.busy_ns, bill.capacity_ns, [(r.department, r.total_cost) for r in bill.rows])

    berlin, now = ZoneInfo("Europe/Berlin"), datetime(2026, 12, 2, tzinfo=UTC)
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(
        [
            make_span(
                started_at=(at := datetime(2026, 11, day, hour, 59, 58, tzinfo=UTC)),
                ended_at=at + timedelta(seconds=4),
                prompt_eval_duration_ns=10**9,
                eval_duration_ns=2 * 10**9,
                department=department,
                upstream_host=f"http://gpu{day % 2}:11434",
            )
            for day in (1, 15, 30)  # 30 November 23:59:58 UTC is in Berlin's December
            for hour in (0, 22, 23)
            for department in ("legal", "sales")
        ]
    )
    before = split()
    with raw_spans():
        assert split() == before
    # gpu1: six calls of 3 s; gpu0: 3 s on the 30th at 00:59:58 UTC, and 1 s of the call
    # at 22:59:58 UTC (23:59:58 in Berlin) before Berlin's December begins.
    assert before[0] == (6 * 3 + 3 + 1) * 10**9
    # No raw span to rebuild from (pruned first: this ometer writes a ledger of its revision).
    prune(ledger, 1, now=datetime(2026, 12, 2, tzinfo=UTC))
    downgrade(ledger, "0010")
    assert "rollup_busy_cells" not in inspect(ledger.engine).get_table_names()
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to the head
    november = int(datetime(2026, 10, 31, 23, tzinfo=UTC).timestamp())
    with ledger.read() as conn:
        months = conn.execute(
            text("SELECT host, busy_us FROM rollup_busy_cells WHERE grain = 2 AND start = :s"),
            {"s": november},
        ).all()
    assert sorted(tuple(m) for m in months) == [
        ("http://gpu0:11434", 4_000_000),
        ("http://gpu1:11434", 18_000_000),
    ]
    assert split() == before


def test_upgrading_from_0011_keeps_timings_per_model_even_for_pruned_days(db_url: str) -> None:
    """0012 keeps histograms per model over all tenants and departments: day and month rows
    summed from the ones there (pruned days too), quarter hours from the rebuild it asks
    for. Per model, a pruned month answers as before, an open edge after the prune
    needs no raw spans, and one before it says its calls are gone, as it did."""
    from sqlalchemy import text

    from ollama_meter.ledger import prune
    from ollama_meter.ledger._aggregate import raw_spans
    from ollama_meter.periods import Window, parse_period
    from ollama_meter.reports import perf_report

    spans = [
        make_span(
            started_at=datetime(2026, month, day, hour, 20, tzinfo=UTC),
            tenant=tenant,
            request_model=model,
            latency_ns=(day * 100 + hour) * 1_000_000,
        )
        for month in (10, 11)
        for day in (1, 15)
        for hour in (0, 9, 23)
        for tenant, model in (("acme", "llama3.1:8b"), ("globex", "llama3.1:8b"), ("acme", "*"))
    ]
    ledger = Ledger(db_url)
    ledger.record(spans)
    utc = ZoneInfo("UTC")
    october = parse_period("2026-10", tz=utc, now=datetime(2026, 12, 1, tzinfo=UTC))
    before = perf_report(ledger, october, ["model"]).rows
    assert [r["model"] for r in before] == ["*:latest", "llama3.1:8b"]  # "*" is a model called *
    prune(ledger, 20, now=datetime(2026, 11, 10, tzinfo=UTC))  # October's spans are gone
    downgrade(ledger, "0011")
    per_model = "SELECT count(*) FROM rollup_histograms WHERE department = '+'"
    with ledger.read() as conn:
        assert not conn.execute(text(per_model)).scalar()
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to 0012, which sums and rebuilds
    with ledger.read() as conn:
        assert conn.execute(text(per_model + " AND grain = 0")).scalar()
    assert perf_report(ledger, october, ["model"]).rows == before
    # 15 November, 09:00 to 09:30 and on: quarter hours per model, no raw spans needed
    open_edge = Window(
        datetime(2026, 11, 15, 9, tzinfo=UTC), datetime(2026, 11, 15, 9, 30, tzinfo=UTC), ""
    )
    report = perf_report(ledger, open_edge, ["model"])
    with raw_spans():
        assert report.rows == perf_report(ledger, open_edge, ["model"]).rows
    assert [r.requests for r in report.rows] == [1, 2]
    # 15 October at 09:20: pruned before 0012, so said to be gone, as before
    gone = Window(
        datetime(2026, 10, 15, 9, tzinfo=UTC), datetime(2026, 10, 15, 9, 30, tzinfo=UTC), ""
    )
    assert perf_report(ledger, gone, ["model"]).warnings


def test_upgrading_from_0007_keeps_every_span_without_a_gateway_queue_and_adds_limits(
    db_url: str,
) -> None:
    """0008 adds ``spans.queue_ns`` (NULL for calls before it) and the ``limits`` table."""
    from ollama_meter.records import Limit

    ledger = Ledger(db_url)
    ledger.record([make_span(latency_ns=5_000_000), make_span(latency_ns=7_000_000)])
    downgrade(ledger, "0007")
    assert "limits" not in inspect(ledger.engine).get_table_names()
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # migrates to the head
    assert current_revision(ledger.engine) == HEAD_REVISION
    kept = ledger.latest(SpanFilter(), 10)
    assert sorted(s.latency_ns for s in kept) == [5_000_000, 7_000_000]
    assert [s.queue_ns for s in kept] == [None, None]
    assert ledger.limits() == []
    ledger.set_limit(Limit("acme", "sales", rpm=60))
    assert [(lim.scope(), lim.rpm) for lim in ledger.limits()] == [("acme/sales", 60)]


def test_the_write_that_finds_the_database_back_records_the_spool_a_slice_at_a_time(
    tmp_path: Path,
) -> None:
    """The first write after an outage recorded the whole spool, one file per call the outage
    refused: every call waiting on that write (group commit) waited a minute and more."""
    import sqlite3

    from ollama_meter.ledger._durable import DRAIN_SLICE

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).dispose()
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ledger = Ledger(url, wait=0.05, retry_delay=0.001)
    assert ledger.drain_slice == DRAIN_SLICE == 0.2
    ledger.drain_slice = 0.0  # a slice that has always run out: one file a write, on any machine
    assert set(ledger.record([make_span()]).values()) == {Stored.SPOOLED}  # the outage
    blocker.execute("ROLLBACK")
    blocker.close()
    for _ in range(20):  # what the outage's other calls spooled, a file each
        ledger.spool.put([make_span()])
    assert len(ledger.spool.pending()) == 21
    for write in range(1, 22):  # each write records its own span and the oldest file
        assert set(ledger.record([make_span()]).values()) == {Stored.COMMITTED}
        assert (len(ledger.spool.pending()), ledger.count()) == (21 - write, 2 * write)
    ledger.record([make_span()])
    assert ledger.count() == 43  # nothing left to record: the write is its own alone


def test_upgrading_from_0012_keeps_undelivered_alerts_and_lets_one_process_claim_each(
    db_url: str,
) -> None:
    from sqlalchemy import text

    from ollama_meter.ledger import upgrade
    from ollama_meter.ledger._engine import create_ledger_engine

    engine = create_ledger_engine(db_url)
    upgrade(engine, "0012")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO budget_alerts (budget_id, tenant, department, period, period_start, "
                "period_label, threshold, spent_micros, limit_micros, currency, fired_at, "
                "deliveries, delivered, attempts) VALUES (1, 'acme', NULL, 'month', "
                "'2026-11-01 00:00:00', '2026-11', 90, 9, 10, 'USD', '2026-11-20 10:00:00', "
                '\'{"log": "sent"}\', false, 1)'
            )
        )
    engine.dispose()
    ledger = Ledger(db_url)  # opening migrates to the head
    (alert,) = ledger.alerts(undelivered_only=True)
    assert (alert.threshold, alert.attempts, alert.deliveries) == (90, 1, {"log": "sent"})
    assert ledger.claim_alert_attempt(alert.id, 60)  # no claim on it yet
    assert not Ledger(db_url).claim_alert_attempt(alert.id, 60)  # another process: claimed
    ledger.record_alert_delivery(alert.id, {"log": "sent", "webhook": "failed: 503"}, False)
    assert Ledger(db_url).claim_alert_attempt(alert.id, 60)  # the outcome ends the claim
    ledger.record_alert_delivery(alert.id, {"log": "sent", "webhook": "sent"}, True)
    assert not ledger.claim_alert_attempt(alert.id, 60)  # delivered: nothing to claim
    assert ledger.alerts()[0].attempts == 3


def test_an_edit_of_a_pricing_file_moves_no_price_the_edit_did_not_change(db_url: str) -> None:
    """Equally specific rules from the same date are told apart by which came last; a pricing
    file's rules were all added again on any edit (a comment too), so a rule set by
    ``ometer pricing set`` after the file lost to the file's same rule once the file was
    touched: a comment moved the price. Rules the file still has keep their place."""
    from ollama_meter.pricing import select_rule

    ledger = Ledger(db_url)
    file_rules = [
        PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1)),
        PriceRule(pattern="a:*", currency="USD", input_per_1m=Decimal(5)),
    ]
    assert ledger.sync_price_rules("file:/p.toml", b"v1", lambda: file_rules)
    cli_rule = ledger.add_price_rule(
        PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(2))
    )
    day = date(2026, 11, 1)
    assert select_rule(ledger.price_rules(), "b:1", day) == cli_rule
    kept = {r.id for r in ledger.price_rules()}
    # a comment added; then a.* changed: neither is a change to '*'
    assert ledger.sync_price_rules("file:/p.toml", b"v1 # a comment", lambda: file_rules)
    assert {r.id for r in ledger.price_rules()} == kept
    assert select_rule(ledger.price_rules(), "b:1", day) == cli_rule
    changed = [file_rules[0], PriceRule(pattern="a:*", currency="USD", input_per_1m=Decimal(6))]
    assert ledger.sync_price_rules("file:/p.toml", b"v2", lambda: changed)
    assert select_rule(ledger.price_rules(), "b:1", day) == cli_rule
    assert select_rule(ledger.price_rules(), "a:1", day).input_per_1m == Decimal(6)  # type: ignore[union-attr]
    # unchanged rules still say which file they came from, and it is read once more only on change
    assert ledger.sync_price_rules("file:/p.toml", b"v2", lambda: changed) is False
    assert sorted(r.source for r in ledger.price_rules()) == ["cli", "file:/p.toml", "file:/p.toml"]


def _everything(
    ledger: Ledger,
    tables: Sequence[str] = (
        "spans",
        "rollups",
        "rollup_histograms",
        "rollup_busy",
        "rollup_busy_cells",
    ),
) -> dict[str, list[tuple[object, ...]]]:
    """Every row of ``tables`` (every span and rollup row), exactly as stored, each column by
    name (a downgrade and upgrade may move a column to the end of its table)."""
    from sqlalchemy import text

    with ledger.read() as conn:
        return {t: _rows(conn.execute(text(f"SELECT * FROM {t}"))) for t in tables}


def _rows(result: Any) -> list[tuple[object, ...]]:
    """Each row as its (column, value) pairs in the order of the columns' names, sorted by
    their repr. The names are sorted once a table, not once a row: the upgrade tests compare
    about 8,000 rows a ledger, and sorting each row's items took a third of their time. The
    rows are sorted by the repr of their values alone (every row of a table has the same
    names): the names' repr in each row's key took another third of the sort."""
    names = sorted(result.keys())
    at = [list(result.keys()).index(name) for name in names]
    values = sorted((tuple(row[i] for i in at) for row in result), key=repr)
    return [tuple(zip(names, row, strict=True)) for row in values]


_RECORDED: dict[tuple[str, str], dict[str, list[tuple[object, ...]]]] = {}
"""Every span and rollup row of each recorded ledger the revisions start from, by what it
holds and its backend."""


@pytest.mark.parametrize("revision", [f"{n:04d}" for n in range(1, int(HEAD_REVISION))])
def test_a_ledger_of_any_older_revision_upgrades_with_every_span_and_rollup_exact(
    db_url: str, revision: str, templates: LedgerTemplates
) -> None:
    """A ledger taken down to ``revision`` (with the migrations' own downgrades) and opened
    again has every span and every rollup row it had, to the microsecond and micro-unit:
    rollups a migration sums, rebuilds or re-keys are the rollups the spans give."""
    from tests.factories import OFFICE_NOW, office_spans

    # Cells cut off UTC midnights; below 0006 a ledger kept no zone (its rollups go with
    # the downgrade), and one from then is cut in UTC.
    zone = "Europe/Berlin" if revision >= "0006" else None
    # Nothing a downgrade below 0008 (queue time) or 0004 (duration source) drops.
    spans = [
        replace_span(s, queue_ns=None, duration_source="reported" if s.eval_duration_ns else None)
        for s in office_spans(OFFICE_NOW + timedelta(days=20))
    ]

    def recorded(url: str) -> Ledger:
        made = Ledger(url, zone=zone)
        made.record(spans)
        return made

    # Each revision on each backend starts from a copy of the one ledger recorded, whose
    # rows are read once (from its first copy): every copy holds the template's bytes.
    what = f"office, 20 days on, zone {zone}"
    templates.copy(db_url, what, recorded)
    ledger = Ledger(db_url, zone=zone)
    key = (what, db_url.split(":", 1)[0])
    if key not in _RECORDED:
        _RECORDED[key] = _everything(ledger)
    before = _RECORDED[key]
    assert len(before["spans"]) == len(spans) and before["rollup_busy_cells"]
    downgrade(ledger, revision)
    ledger.engine.dispose()
    ledger = Ledger(db_url)  # upgrades to the head and rebuilds what the migrations ask for
    assert current_revision(ledger.engine) == HEAD_REVISION
    assert _everything(ledger) == before


def test_db_upgrade_builds_the_rollups_its_migrations_ask_for(cli: Any, db_url: str) -> None:
    """``ometer db upgrade`` before restarting gateways does the whole upgrade: the rebuild a
    migration asks for (the long part on a big ledger) is not left to the first gateway
    that opens the ledger, with every other one waiting for it."""
    from sqlalchemy import text

    from ollama_meter.ledger._engine import create_ledger_engine

    ledger = Ledger(db_url)
    ledger.record([make_span(), make_span(department="legal")])
    before = _everything(ledger)
    downgrade(ledger, "0011")  # 0012 asks for a rebuild
    ledger.engine.dispose()
    result = cli("db", "upgrade", "--db", db_url)
    assert result.code == 0 and "0011 → " + HEAD_REVISION in result.stdout, result.stderr
    engine = create_ledger_engine(db_url)  # as it is: opening a Ledger would build them
    with engine.connect() as conn:
        meta = dict(conn.execute(text("SELECT key, value FROM ledger_meta")).all())
    engine.dispose()
    assert meta.get("rollups") == "current" and meta.get("rebuilding") is None
    assert _everything(Ledger(db_url)) == before


def test_upgrading_past_0014_never_gives_a_new_budget_the_id_of_one_removed_before(
    db_url: str,
) -> None:
    """0014 made budget ids never reused, because alerts stay under a removed budget's id:
    but on SQLite the new table counted on from the highest budget left, so the first budget
    made after the upgrade took the id of the newest one removed before it, and inherited
    its alerts (its thresholds reached this period never fired). 0015 counts on from every
    id used."""
    from sqlalchemy import text

    from ollama_meter.records import Budget

    ledger = Ledger(db_url)
    kept = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10, currency="USD")
    )
    removed = ledger.save_budget(
        Budget(tenant="acme", department="legal", period="month", limit=10, currency="USD")
    )
    assert removed.id is not None and kept.id is not None and removed.id > kept.id
    with ledger.write() as conn:  # an alert it fired, as alerts stay after the budget goes
        conn.execute(
            text(
                "INSERT INTO budget_alerts (budget_id, tenant, department, period, period_start,"
                " period_label, threshold, spent_micros, limit_micros, currency, fired_at,"
                " deliveries, delivered, attempts) VALUES (:id, 'acme', 'legal', 'month',"
                " '2026-11-01 00:00:00', '2026-11', 75, 8, 10, 'USD', '2026-11-20 00:00:00',"
                " '{}', true, 1)"
            ),
            {"id": removed.id},
        )
    ledger.remove_budget(removed.id)
    downgrade(ledger, "0013")  # as a 0013 ledger was: ids counted on from the highest left
    ledger.engine.dispose()
    ledger = Ledger(db_url)
    new = ledger.save_budget(
        Budget(tenant="acme", department="support", period="month", limit=10, currency="USD")
    )
    assert new.id is not None and new.id > removed.id


def test_a_new_price_rule_never_takes_the_id_of_one_removed_or_named_by_a_span(
    db_url: str,
) -> None:
    """A span keeps the id of the rule that priced it: on SQLite the next rule took a removed
    rule's id (the highest left counted on), and the spans it priced then named a rule that
    never priced them. Upgrading past 0016 counts on from every id a rule or a span has used."""
    from tests.factories import make_span, token_prices

    ledger = Ledger(db_url)
    kept = ledger.add_price_rule(token_prices())
    removed = ledger.add_price_rule(token_prices("qwen*"))
    assert kept.id is not None and removed.id is not None and removed.id > kept.id
    ledger.record([make_span(price_rule_id=removed.id)])  # a call it priced
    ledger.remove_price_rule(removed.id)
    downgrade(ledger, "0015")  # as a 0015 ledger was: ids counted on from the highest left
    ledger.engine.dispose()
    ledger = Ledger(db_url)
    new = ledger.add_price_rule(token_prices("mistral*"))
    assert new.id is not None and new.id > removed.id
    ledger.remove_price_rule(new.id)
    assert (ledger.add_price_rule(token_prices("phi*")).id or 0) > new.id


@pytest.mark.parametrize("below", ["", "/sub"])
@pytest.mark.parametrize(
    ("blocker", "why"),
    [
        ("file", "{blocker} is a file, not a folder"),
        (
            "link",
            "{blocker} links to {tmp}/moved, not there (not made yet, or on a disk not mounted)",
        ),
    ],
)
def test_a_folder_that_cannot_be_made_says_why_and_what_to_do(
    tmp_path: Path, blocker: str, why: str, below: str
) -> None:
    """A file, or a link to a folder moved away, where the ledger's folder is to be: the system
    said "File exists" of the link (and of a file in the folder's own place), naming nothing."""
    blocked = tmp_path / blocker
    if blocker == "file":
        blocked.write_text("x")
    else:
        blocked.symlink_to(tmp_path / "moved")
    folder = f"{blocked}{below}"
    with pytest.raises(LedgerError) as caught:
        Ledger(f"sqlite:///{folder}/ledger.db")
    said = why.format(blocker=blocked, tmp=tmp_path)
    assert str(caught.value) == (
        f"cannot create the ledger folder {folder}: {said}; give a ledger in a folder ometer may "
        "write (OMETER_DB_URL, or --db)"
    )
