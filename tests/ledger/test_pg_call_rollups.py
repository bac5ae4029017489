"""The rollups that calls' writes make on PostgreSQL, a call a transaction and several writers
at once, are exactly those a rebuild sums from the raw spans: a call's rows go as arrays, a
statement a table, its busy minutes claimed (made, counted, locked, read) in one statement."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import rebuild
from ollama_meter.records import NO_HOST, SpanRecord, Stored, new_span_row_id
from tests.factories import make_span, opened
from tests.ledger.test_import_roundtrip import ZONES, _emptied
from tests.ledger.test_transfer import _tables

START = datetime(2026, 11, 30, 22, 50, tzinfo=UTC)  # a day's, and in some zones a month's, end


@st.composite
def _call(draw: Any) -> SpanRecord:
    """A call in the same few minutes as the others, on one of two servers (or none), so
    writers meet on busy minutes, cells and histogram rows."""
    at = START + timedelta(microseconds=draw(st.integers(0, 40 * 60 * 10**6)))
    busy = draw(st.sampled_from([0, 10**6, 50 * 10**9, 200 * 10**9]))
    status = draw(st.sampled_from(["ok", "ok", "error"]))
    cost = draw(st.integers(0, 10**9))
    return make_span(
        id=new_span_row_id(int(at.timestamp() * 10**9)),
        started_at=at,
        ended_at=at + timedelta(microseconds=busy // 1000 + draw(st.integers(0, 10**7))),
        tenant=draw(st.sampled_from(["acme", "globex"])),
        department=draw(st.sampled_from(["sales", "legal"])),
        user=draw(st.sampled_from([None, "alice"])),
        request_model=draw(st.sampled_from(["llama3.1:8b", "qwen2.5:7b"])),
        upstream_host=draw(st.sampled_from(["http://gpu0:11434", "http://gpu1:11434", NO_HOST])),
        status=status,
        error_type=None if status == "ok" else "timeout",
        output_tokens=draw(st.integers(0, 5000)),
        prompt_eval_duration_ns=busy // 3,
        eval_duration_ns=busy - busy // 3,
        total_duration_ns=draw(st.none() | st.integers(busy, busy + 10**10)),
        latency_ns=draw(st.none() | st.integers(0, 10**11)),
        ttft_ns=draw(st.none() | st.integers(0, 10**10)),
        queue_ns=draw(st.none() | st.integers(0, 10**10)),
        cost_tokens=cost,
        cost_total=cost,
        unpriced=False,
    )


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_call(), min_size=1, max_size=30, unique_by=lambda s: s.id),
    writers=st.integers(1, 3),
    zone=st.sampled_from(ZONES),
)
def test_calls_written_at_once_make_the_rollups_a_rebuild_makes(
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    spans: list[SpanRecord],
    writers: int,
    zone: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ollama_meter.ledger")
    caplog.clear()
    _emptied(db_url)  # hypothesis runs every example on the same database
    with opened(db_url, zone=zone) as ledger:
        stored: list[dict[str, Stored]] = []

        def write(share: list[SpanRecord]) -> None:
            with opened(db_url) as own:
                stored.extend(own.record([span]) for span in share)

        threads = [
            threading.Thread(target=write, args=(spans[at::writers],)) for at in range(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [set(where.values()) for where in stored] == [{Stored.COMMITTED}] * len(spans)
        # Writers lock rows in one order: none waited out a deadlock and wrote again.
        assert not [r.getMessage() for r in caplog.records if "locked" in r.getMessage()]
        written = _tables(ledger)
        rebuild(ledger.write, ledger.read)
        assert _tables(ledger) == written
