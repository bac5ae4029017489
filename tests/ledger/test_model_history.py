"""A hard budget bounds a time-priced call with its model's latest successful calls: the
model's, in whatever spelling they asked for it, found without a pass over the spans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.meter import SpanRecord
from ollama_meter.records import PastCall, counted_model
from tests.factories import make_span
from tests.ledger.test_ledger import downgrade
from tests.ledger.test_rollups import MODELS, spelled

START = datetime(2026, 11, 10, 12, tzinfo=UTC)


@st.composite
def calls(draw: st.DrawFn) -> list[SpanRecord]:
    count = draw(st.integers(0, 30))
    return [
        make_span(
            started_at=START + timedelta(seconds=at),
            request_model=draw(spelled(MODELS)),
            status=draw(st.sampled_from(["ok", "ok", "error", "client_abort"])),
            input_tokens=at,
            output_tokens=draw(st.integers(0, 9)),
        )
        for at in range(count)
    ]


def _past(span: SpanRecord) -> PastCall:
    return PastCall(
        span.input_tokens,
        span.output_tokens,
        span.prompt_eval_duration_ns or 0,
        span.eval_duration_ns or 0,
        span.load_duration_ns or 0,
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spans=calls(), asked=spelled(MODELS), limit=st.integers(1, 12))
def test_a_models_history_is_its_latest_ok_calls_in_every_spelling(
    tmp_path_factory: pytest.TempPathFactory, spans: list[SpanRecord], asked: str, limit: int
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('history') / 'l.db'}")
    ledger.record(spans)
    wanted = [
        _past(span)
        for span in reversed(spans)
        if span.status == "ok" and counted_model(span.request_model) == counted_model(asked)
    ][:limit]
    assert ledger.recent_usage(asked, limit) == wanted


def _plans(ledger: Ledger, statements: list[tuple[str, Any]]) -> list[str]:
    with ledger.engine.connect() as conn:
        return [
            " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", args))
            for sql, args in statements
        ]


def test_the_history_is_read_by_index_and_never_scans_the_spans(tmp_path: Path) -> None:
    """On the path of every time-priced call: a model called rarely or never read every
    span (40 ms at 100,000 spans, 4 s at 10 million) looking for its calls."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record(
        [make_span(started_at=START + timedelta(seconds=n), status="error") for n in range(50)]
        + [make_span(started_at=START, request_model="LLAMA3.1:8B")]
    )
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, sql: str, args: Any, context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            statements.append((sql, args))

    sa.event.listen(ledger.engine, "before_cursor_execute", seen)
    for model in ("llama3.1:8b", "never:1b"):
        statements.clear()
        assert len(ledger.recent_usage(model)) == (model == "llama3.1:8b")
        plans = [p for p in _plans(ledger, statements) if "spans" in p]
        assert plans, statements
        for plan in plans:
            assert "SCAN spans" not in plan and "ix_spans_request_model" in plan, plan


def test_an_upgraded_ledger_knows_the_spellings_its_spans_hold(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.record(
        [
            make_span(started_at=START, request_model="registry.ollama.ai/library/llama3.1:8b"),
            make_span(started_at=START + timedelta(seconds=1), request_model=" Llama3.1:8B"),
            make_span(started_at=START + timedelta(seconds=2), status="error"),
        ]
    )
    downgrade(ledger, "0018")
    close_ledgers()
    assert [p.input_tokens for p in Ledger(db_url).recent_usage("llama3.1:8b")] == [7, 7]


def test_a_name_on_record_costs_a_write_no_statement(db_url: str) -> None:
    """Noting names is on every call's write: one the ledger has, once read back, is neither
    read nor written again (on PostgreSQL an insert of it waited on another writer's)."""
    ledger = Ledger(db_url)
    ledger.record([make_span(started_at=START)])  # written
    ledger.record([make_span(started_at=START + timedelta(seconds=9))])  # read: on record
    seen: list[str] = []
    sa.event.listen(ledger.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    ledger.record([make_span(started_at=START + timedelta(seconds=n)) for n in range(1, 4)])
    assert seen and not [sql for sql in seen if "model_names" in sql], seen
    ledger.record([make_span(started_at=START, request_model="LLAMA3.1:8B")])
    assert [p.input_tokens for p in ledger.recent_usage("llama3.1:8b", 3)] == [7, 7, 7]
