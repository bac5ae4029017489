"""A hard budget bounds a time-priced call with its model's latest successful calls: the
model's, in whatever spelling they asked for it, found without a pass over the spans."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.ledger._history import KEPT
from ollama_meter.meter import SpanRecord
from ollama_meter.records import PastCall, counted_model
from tests.factories import make_span, opened
from tests.ledger.test_ledger import downgrade
from tests.ledger.test_rollups import MODELS, spelled

START = datetime(2026, 11, 10, 12, tzinfo=UTC)


@st.composite
def calls(draw: st.DrawFn) -> list[SpanRecord]:
    count = draw(st.integers(0, 3 * KEPT))
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
@given(
    spans=calls(),
    asked=spelled(MODELS),
    limit=st.integers(1, KEPT),
    cuts=st.lists(st.integers(0, 3 * KEPT), max_size=4),
    shuffled=st.randoms(use_true_random=False),
)
def test_a_models_history_is_its_latest_ok_calls_in_every_spelling(
    tmp_path_factory: pytest.TempPathFactory,
    spans: list[SpanRecord],
    asked: str,
    limit: int,
    cuts: list[int],
    shuffled: Random,
) -> None:
    """Written in batches of any size, in any order (an import of older calls after newer
    ones), and cut back to the latest KEPT of each model as they go."""
    with opened(f"sqlite:///{tmp_path_factory.mktemp('history') / 'l.db'}") as ledger:
        batches = [spans[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(spans)])]
        shuffled.shuffle(batches)
        for batch in batches:
            ledger.record(batch)
        wanted = [
            _past(span)
            for span in reversed(spans)
            if span.status == "ok" and counted_model(span.request_model) == counted_model(asked)
        ][:limit]
        assert ledger.recent_usage(asked, limit) == wanted
        with ledger.engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT model, count(*) FROM model_history GROUP BY model"))
            assert all(count <= 2 * KEPT for _, count in kept)


def test_a_thousand_spellings_of_a_model_are_one_history_of_the_latest(tmp_path: Path) -> None:
    """Every spelling a call succeeds with (any case, blanks around) is the one model's: a
    caller sending a new one each time grows nothing a budgeted call reads."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    names = ["".join(random.Random(n).choice((c.lower(), c.upper())) for c in "llama3.1:8b")
             + " " * (n % 40) for n in range(1000)]  # fmt: skip
    ledger.record(
        [
            make_span(started_at=START + timedelta(seconds=n), request_model=name, input_tokens=n)
            for n, name in enumerate(names)
        ]
    )
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model, count(*) FROM model_history GROUP BY model"))
        assert rows.all() == [("llama3.1:8b", KEPT)]
    assert [past.input_tokens for past in ledger.recent_usage(" LLAMA3.1:8b", 3)] == [999, 998, 997]


def _plans(ledger: Ledger, statements: list[tuple[str, Any]]) -> list[str]:
    with ledger.engine.connect() as conn:
        return [
            " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", args))
            for sql, args in statements
        ]


def test_the_history_is_read_by_its_key_and_never_scans_the_spans(tmp_path: Path) -> None:
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
        plans = _plans(ledger, statements)
        assert plans, statements
        for plan in plans:
            assert "spans" not in plan and "SCAN" not in plan, plan
            assert "SEARCH model_history USING PRIMARY KEY (model=?)" in plan, plan


def test_an_upgraded_ledger_has_the_latest_calls_of_every_spelling_its_spans_hold(
    db_url: str,
) -> None:
    ledger = Ledger(db_url)
    spellings = ["registry.ollama.ai/library/llama3.1:8b", " Llama3.1:8B", "llama3.1:8b"]
    ledger.record(
        [
            make_span(
                started_at=START + timedelta(seconds=n),
                request_model=spellings[n % 3],
                status="error" if n % 7 == 0 else "ok",
                input_tokens=n,
            )
            for n in range(3 * KEPT)
        ]
        + [make_span(started_at=START, request_model="qwen2.5:7b", input_tokens=5)]
    )
    downgrade(ledger, "0018")
    close_ledgers()
    upgraded = Ledger(db_url)
    wanted = [n for n in reversed(range(3 * KEPT)) if n % 7][:20]
    assert [p.input_tokens for p in upgraded.recent_usage("LLAMA3.1:8B")] == wanted
    assert [p.input_tokens for p in upgraded.recent_usage("qwen2.5")] == []
    assert [p.input_tokens for p in upgraded.recent_usage("qwen2.5:7b")] == [5]


def test_a_models_calls_are_cut_back_once_in_many_writes(db_url: str) -> None:
    """Cutting a model's history back is a delete of rows other writers' cuts delete too (on
    PostgreSQL the second waits for the first to commit): a write cuts only once the model
    holds twice KEPT calls, so most writes add their calls and delete nothing."""
    ledger = Ledger(db_url)
    held, cuts = [], 0
    for n in range(5 * KEPT):
        ledger.record([make_span(started_at=START + timedelta(seconds=n), input_tokens=n)])
        with ledger.engine.connect() as conn:
            held.append(conn.execute(sa.text("SELECT count(*) FROM model_history")).scalar_one())
        cuts += len(held) > 1 and held[-1] < held[-2]
        assert [p.input_tokens for p in ledger.recent_usage("llama3.1:8b", 3)] == [n, n - 1, n - 2][
            : n + 1
        ]
    assert max(held) == 2 * KEPT
    assert cuts == 3, held
