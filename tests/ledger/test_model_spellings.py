"""Ollama runs ``LLAMA3.1:8B``, ``llama3.1:8b `` and ``registry.ollama.ai/library/llama3.1:8b``
as one model (and echoes the caller's spelling): every report counts it under one name."""

from __future__ import annotations

from dataclasses import replace
from zoneinfo import ZoneInfo

from hypothesis import given, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.meter import SpanRecord
from ollama_meter.periods import parse_period
from ollama_meter.records import counted_model
from ollama_meter.reports import perf_report, spend_report
from tests.ledger.test_rollups import (
    BY,
    EXAMPLES,
    NOW,
    ZONES,
    _fill,
    ledger,  # noqa: F401 (a fixture)
    ledger_contents,
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
@given(
    content=ledger_contents(),
    zone=st.sampled_from(ZONES),
    cells=st.sampled_from(ZONES),
    by=BY,
    unit=st.sampled_from([None, "day", "month"]),
    period=st.sampled_from(["2026-11", "2026-11-15", "2026-12"]),
    model=st.sampled_from([None, "llama3.1:8b", " LLAMA3.1:8B", "llama3.1", "*", "QWEN2.5:7B"]),
)
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
