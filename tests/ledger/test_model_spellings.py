"""Ollama runs ``LLAMA3.1:8B``, ``llama3.1:8b `` and ``registry.ollama.ai/library/llama3.1:8b``
as one model (and echoes the caller's spelling): every report counts it under one name."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import select

from ollama_meter.ledger import Ledger, SpanFilter, _rollup, _spellings, close_ledgers, prune
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._rollup import HISTOGRAMS, ROLLUPS
from ollama_meter.meter import SpanRecord
from ollama_meter.periods import Window, parse_period
from ollama_meter.records import MODEL_LIMIT, counted_model, make_storable
from ollama_meter.reports import perf_report, spend_report
from tests.factories import make_span
from tests.ledger.test_ledger import downgrade
from tests.ledger.test_rollups import (
    EXAMPLES,
    MODELS,
    NOW,
    REPORTED,
    SPELLINGS,
    _fill,
    ledger,  # noqa: F401 (a fixture)
    spelled,
)


def _canonical(span: SpanRecord) -> SpanRecord:
    """``span`` as if every caller had spelled its model as ``ollama list`` shows it."""
    answered = span.response_model
    return replace(
        span,
        request_model=counted_model(span.request_model),
        response_model=counted_model(answered) if answered else answered,
    )


@EXAMPLES
@given(**REPORTED, model=SPELLINGS)
def test_a_models_spellings_count_as_the_one_name_in_every_report(
    ledger: Ledger,  # noqa: F811
    content: tuple[list[SpanRecord], list[list[SpanRecord]]],
    zone: ZoneInfo,
    cells: ZoneInfo,
    by: list[str],
    unit: str | None,
    period: str,
    model: str | None,
) -> None:
    """Spend and perf, grouped and filtered by model, from rollups and from raw spans, are the
    reports of the same calls had every caller spelled each model the one way."""
    window = parse_period(period, tz=zone, now=NOW)
    columns = [*by, unit] if unit else by
    perf_by = [name for name in by if name != "user"] or ["model"]

    def reports() -> tuple[object, ...]:
        spend = spend_report(ledger, window, columns, tz=zone, model=model)
        perf = perf_report(ledger, window, perf_by, unit=unit, tz=zone, model=model)
        where = SpanFilter(since=window.start, until=window.end, model=model)
        logged = sorted(span.id for span in ledger.latest(where, limit=1000))
        return spend.rows, spend.unpriced_requests, perf.rows, logged, ledger.count(where)

    _fill(ledger, content[1], cells)
    spelled = reports()
    with raw_spans():
        assert reports() == spelled
    _fill(ledger, [[_canonical(span) for span in batch] for batch in content[1]], cells)
    assert reports() == spelled
    models = {counted_model(s.response_model or s.request_model) for s in content[0]}
    assert set(ledger.names("model")) == models


_SPELLED = [
    *["llama3.1:8b"] * 12,
    *["LLAMA3.1:8B"] * 2,
    *["llama3.1:8b "] * 2,
    "registry.ollama.ai/library/llama3.1:8b",
    "llama3.1",
    "Library/Llama3.1:latest",
    "*",
    "*:latest",
]


def _office(days: Sequence[datetime]) -> list[SpanRecord]:
    return [
        make_span(
            started_at=day + timedelta(minutes=7 * n),
            request_model=name,
            response_model=name if n % 3 else None,
            department=("sales", "ops")[n % 2],
            latency_ns=(n + 1) * 10**8,
            cost_total=1_000 + n,
            cost_tokens=1_000 + n,
        )
        for day in days
        for n, name in enumerate(_SPELLED)
    ]


def _rollup_rows(made: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    with made.read() as conn:
        return {t.name: sorted(map(tuple, conn.execute(select(t)))) for t in (ROLLUPS, HISTOGRAMS)}


def test_an_older_ledgers_rows_of_a_models_spellings_are_merged_on_upgrade_pruned_days_too(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger 0017's ometer wrote (rollup rows per spelling), a day of it pruned (rollups
    only): upgraded, its rollups are those the head writes for the same calls, and a report
    counts each model once over the pruned day and the kept one."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    calls = _office([datetime(2026, 11, 2, 9, tzinfo=UTC), datetime(2026, 11, 28, 9, tzinfo=UTC)])
    with monkeypatch.context() as old:  # as 0017 wrote them: each spelling its own rows
        old.setattr(_rollup, "counted_model", lambda name: name)
        ledger = Ledger(db_url)
        ledger.record([replace(s) for s in calls])
        assert prune(ledger, 10, now=now).removed == len(_SPELLED)
    split = _rollup_rows(ledger)
    assert {row[5] for row in split["rollups"]} >= {"LLAMA3.1:8B", "llama3.1:8b ", "*"}
    downgrade(ledger, "0017")
    close_ledgers()
    upgraded = _rollup_rows(Ledger(db_url))
    assert upgraded != split

    _fill(ledger, [[replace(s) for s in calls]], ZoneInfo("UTC"))  # the head, from the start
    prune(ledger, 10, now=now)
    assert upgraded == _rollup_rows(ledger)
    window = parse_period("2026-11", tz=UTC, now=now)
    rows = spend_report(ledger, window, ["model"], tz=UTC).rows
    assert {r.label("model"): r.requests for r in rows} == {
        "llama3.1:8b": 34,
        "llama3.1:latest": 4,
        "*:latest": 4,
    }
    asked = spend_report(ledger, window, ["model"], tz=UTC, model="LLAMA3.1:8B ").rows
    assert [(r.label("model"), r.requests) for r in asked] == [("llama3.1:8b", 34)]
    # The pruned day from rollups, the kept one up to 10:11 from its spans (an open edge).
    edge = Window(window.start, datetime(2026, 11, 28, 10, 11, 30, tzinfo=UTC), "to 10:11")
    counted = Counter(counted_model(s.model) for s in calls if s.started_at < edge.end)
    for model in (None, "Library/LLAMA3.1:8b", "llama3.1", "*"):
        rows = spend_report(ledger, edge, ["model"], tz=UTC, model=model).rows
        wanted = {m: n for m, n in counted.items() if model is None or m == counted_model(model)}
        assert {r.label("model"): r.requests for r in rows} == wanted, model


@given(
    st.text(max_size=300)
    | spelled([*MODELS, "a" * 260, "https://https://x", "İ" * 130])
    | st.sampled_from([" ", " \t", "\x00", "x\ud800", " " * 300, "x\x01y"])
)
def test_the_migration_folds_names_as_the_meter_does(name: str) -> None:
    """0018 keeps its own copy of the fold: the same name for any text."""
    assert _migration._counted(name) == counted_model(name)
    assert counted_model(counted_model(name)) == counted_model(name)
    assert len(counted_model(name)) <= MODEL_LIMIT


_migration = importlib.import_module("migrations.versions.0018_model_spellings")


def test_log_of_a_model_reads_back_page_by_page_as_far_as_its_calls_go(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``log -m`` reads ids and models newest first, a page at a time, until it has ``limit``
    calls of the model: the newest, in order, whichever page they were on."""
    monkeypatch.setattr(_spellings, "SCAN_ROWS", 3)
    calls = _office([datetime(2026, 11, 2, 9, tzinfo=UTC), datetime(2026, 11, 28, 9, tzinfo=UTC)])
    made = Ledger(sqlite_url)
    made.record([replace(s) for s in calls])
    for asked in ("LLAMA3.1:8B", "llama3.1", "*", "nothing"):
        ids = sorted(
            (s.id for s in calls if counted_model(s.model) == counted_model(asked)), reverse=True
        )
        for limit in (1, 2, 3, 4, 7, 33, 34, 35, 100):
            found = made.latest(SpanFilter(model=asked, department="sales"), limit=limit)
            sales = [i for i in ids if i in {s.id for s in calls if s.department == "sales"}]
            assert [s.id for s in found] == sales[:limit], (asked, limit)


def test_names_the_meter_rewrites_to_store_are_found_by_any_spelling(sqlite_url: str) -> None:
    """A control character (stored as U+FFFD), a name longer than the column (cut), one that
    lower case makes longer (``İ`` is two letters): each counts under one name the rollups'
    column holds, and a filter of the name as the caller wrote it finds its calls."""
    named = ["Bad\x01Name", "X" * 300, "İ" * 200, "*"]
    made = Ledger(sqlite_url)
    made.record([make_storable(make_span(request_model=name)) for name in named])
    assert sorted(made.names("model")) == sorted(counted_model(n) for n in named)
    assert all(len(n) <= MODEL_LIMIT for n in made.names("model"))
    window = parse_period("2026-11", tz=UTC, now=NOW)
    for name in named:
        # Blanks around a name cut to fit are another name: the ledger kept what fitted.
        padded = [f" {name} "] if len(name) + 2 <= MODEL_LIMIT else []
        for asked in (name, name.lower(), name.upper(), *padded):
            rows = spend_report(made, window, ["model"], tz=UTC, model=asked).rows
            assert [(r.label("model"), r.requests) for r in rows] == [(counted_model(name), 1)]
            assert len(made.latest(SpanFilter(model=asked))) == 1
