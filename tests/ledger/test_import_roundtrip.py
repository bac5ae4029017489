"""`db export | db import` into a fresh ledger, on generated calls: what finance and IT read
(`ometer report`, `chargeback`, `perf`, `log`) comes out byte for byte the same, whatever zone
either ledger cuts its days in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import delete

from ollama_meter.ledger import Ledger, export_lines, import_lines
from ollama_meter.ledger._meta import set_meta
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, ROLLUPS
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import SpanRecord, new_span_row_id
from ollama_meter.records import NO_HOST
from tests.factories import make_span
from tests.ledger.test_transfer import _tables

ZONES = ("UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu")
START = datetime(2026, 10, 31, 20, tzinfo=UTC)  # the last hours of October, all November


@st.composite
def _call(draw: Any) -> SpanRecord:
    at = START + timedelta(
        minutes=draw(st.integers(0, 31 * 24 * 60)), microseconds=draw(st.integers(0, 10**6 - 1))
    )
    busy = draw(st.sampled_from([0, 10**6, 50 * 10**9, 7_200 * 10**9]))
    unpriced = draw(st.booleans())  # then it costs nothing, as ometer writes it
    parts = [0] * 4 if unpriced else draw(st.lists(st.integers(0, 10**9), min_size=4, max_size=4))
    status = draw(st.sampled_from(["ok", "ok", "error", "client_abort", "rejected"]))
    return make_span(
        id=new_span_row_id(int(at.timestamp() * 10**9)),
        started_at=at,
        ended_at=at + timedelta(microseconds=busy // 1000 + draw(st.integers(0, 10**7))),
        tenant=draw(st.sampled_from(["acme", "globex"])),
        department=draw(st.sampled_from(["sales", "legal", "r.d-1"])),
        user=draw(st.sampled_from([None, "alice", "bob@x"])),
        tags=draw(st.sampled_from([{}, {"job": "nightly"}, {"k\x1b": "v\u202e"}])),
        request_model=draw(st.sampled_from(["llama3.1:8b", "qwen2.5:7b"])),
        response_model=draw(st.sampled_from([None, "llama3.1:8b-q4"])),
        upstream_host=draw(st.sampled_from(["http://gpu0:11434", "http://gpu1:11434", NO_HOST])),
        status=status,
        error_type=None if status == "ok" else draw(st.sampled_from(["timeout", "upstream_5xx"])),
        input_tokens=draw(st.integers(0, 10**6)),
        output_tokens=draw(st.integers(0, 10**6)),
        load_duration_ns=draw(st.sampled_from([None, 0, 3 * 10**9])),
        prompt_eval_duration_ns=busy // 3,
        eval_duration_ns=busy - busy // 3,
        total_duration_ns=draw(st.none() | st.integers(busy, busy + 10**10)),
        latency_ns=draw(st.none() | st.integers(0, 10**11)),
        ttft_ns=draw(st.none() | st.integers(0, 10**10)),
        queue_ns=draw(st.none() | st.integers(0, 10**10)),
        currency=draw(st.sampled_from(["USD", "EUR"])),
        cost_tokens=parts[0],
        cost_compute=parts[1],
        cost_energy=parts[2],
        cost_fee=parts[3],
        cost_total=sum(parts),
        unpriced=unpriced,
    )


_ASKED = (
    ("report", "--period", "2026-11", "--by", "tenant,department,user,model,day", "-f", "csv"),
    ("report", "--since", "2026-11-03", "--until", "2026-11-17", "-b", "week,model", "-f", "json"),
    ("chargeback", "--month", "2026-11", "--fixed-cost", "2400", "--idle", "separate"),
    ("chargeback", "--month", "2026-11", "--fixed-cost", "999.99", "-f", "json"),
    ("perf", "--period", "2026-11", "--by", "model,department", "-f", "json"),
    ("log", "--json", "-n", "1000"),
)


def _answers(cli: Any, url: str) -> list[tuple[int, str]]:
    return [(done.code, done.stdout) for done in (cli(*ask, "--db", url) for ask in _ASKED)]


def _emptied(url: str) -> None:
    ledger = Ledger(url)
    with ledger.write() as conn:
        for table in (SPANS, ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
            conn.execute(delete(table))
        for key in ("zone", "pruned_before", "rollups", "rebuilding"):
            set_meta(conn, key, None)
    ledger.dispose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_call(), min_size=1, max_size=40, unique_by=lambda s: s.id),
    zones=st.tuples(*[st.sampled_from(ZONES)] * 3),
)
def test_an_export_imported_into_a_fresh_ledger_answers_byte_for_byte_the_same(
    cli: Any, monkeypatch: Any, tmp_path_factory: Any, db_url: str, spans: list[SpanRecord],
    zones: tuple[str, str, str],
) -> None:  # fmt: skip
    folder: Path = tmp_path_factory.mktemp("roundtrip")
    source_url, target_url = f"sqlite:///{folder / 'source.db'}", db_url
    source = Ledger(source_url, zone=zones[0])
    source.record(spans)
    _emptied(target_url)  # hypothesis runs every example on the same database
    target = Ledger(target_url, zone=zones[1])
    summary = import_lines(target, export_lines(source), batch=7)
    assert (summary.read, summary.added) == (len(spans), len(spans))
    monkeypatch.setenv("OMETER_TIMEZONE", zones[2])  # where the reader is
    try:
        answers = _answers(cli, source_url)
        assert all(code == 0 for code, _ in answers), answers
        assert _answers(cli, target_url) == answers
        assert b"".join(export_lines(target)) == b"".join(export_lines(source))
        if zones[0] == zones[1]:
            assert _tables(target) == _tables(source)
    finally:
        source.dispose()
        target.dispose()
