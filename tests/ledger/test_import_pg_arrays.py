"""An import batch's rollups go to PostgreSQL as arrays, one statement a table, not one a row
(``_upserts.run_rows``): what lands is what a rebuild from the raw spans gives, whatever the
models, error types and hosts hold (quotes, backslashes, braces, commas, ``NULL``), and the
statements the server runs do not grow with the rows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import event

from ollama_meter.ledger import Ledger, import_lines, rebuild
from ollama_meter.ledger._jsonl import export_line
from ollama_meter.meter import new_span_row_id
from ollama_meter.records import SpanRecord, counted_model
from tests.factories import make_span
from tests.ledger.test_import_roundtrip import START, _call, _emptied
from tests.ledger.test_transfer import _tables

_AWKWARD = st.sampled_from(['"', "\\", '\\"', "{a,b}", "NULL", "null", " x ", "a,b", "é€", "{}"])
_NAME = _AWKWARD | st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=12
).filter(str.isprintable)


@st.composite
def _awkward_call(draw: Any) -> SpanRecord:
    span: SpanRecord = draw(_call())
    span.user = draw(st.sampled_from([None, "a+b@c.d_-", "NULL", "x"]))  # a name
    span.request_model = draw(_NAME)
    span.response_model = draw(st.none() | _NAME)
    span.upstream_host = draw(st.sampled_from([span.upstream_host, 'http://h\\"{,}:1']))
    if span.status != "ok":
        span.error_type = draw(_NAME)
    return span


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spans=st.lists(_awkward_call(), min_size=1, max_size=30, unique_by=lambda s: s.id))
def test_an_import_of_any_names_writes_the_rollups_a_rebuild_sums(
    db_url: str, spans: list[SpanRecord]
) -> None:
    _emptied(db_url)  # hypothesis runs every example on the same database
    ledger = Ledger(db_url)
    try:
        summary = import_lines(ledger, [export_line(span) for span in spans])
        assert summary.added == len(spans)
        written = _tables(ledger)
        rebuild(ledger.write, ledger.read)
        assert written == _tables(ledger)
        models = {row[5] for row in written["rollups"]} - {"*"}
        named = {counted_model(span.response_model or span.request_model) for span in spans}
        assert models == named - {"*"}  # each under its one name
    finally:
        ledger.dispose()


def _statements(ledger: Ledger, spans: list[SpanRecord]) -> int:
    """The statements the server runs for an import of ``spans`` in one batch (a row of an
    executemany counts as one: each is parsed, planned and run)."""
    ran = []

    def sent(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        ran.append(len(params) if many else 1)

    event.listen(ledger.engine, "before_cursor_execute", sent)
    try:
        assert import_lines(ledger, [export_line(span) for span in spans]).added == len(spans)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", sent)
    return sum(ran)


def test_an_import_batch_runs_as_many_statements_for_200_spans_as_for_one(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs a statement a row, in the process: no server to go to")
    spans = []
    for at in range(200):  # each in a minute, quarter hour and histogram row of its own
        started = START + timedelta(minutes=17 * at)
        spans.append(
            make_span(
                id=new_span_row_id(int(started.timestamp() * 10**9)),
                started_at=started,
                ended_at=started + timedelta(seconds=1),
                department=f"d{at % 7}",
                user=f"u{at}",
                request_model=f"m{at % 5}",
                upstream_host="http://gpu0:11434",
                prompt_eval_duration_ns=10**8,
                eval_duration_ns=at * 10**6,
                latency_ns=10**6 * (at + 1),
            )
        )
    ledger = Ledger(db_url)
    try:
        one = _statements(ledger, spans[:1])
        _emptied(db_url)
        assert _statements(ledger, spans) == one
    finally:
        ledger.dispose()
