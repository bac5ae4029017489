"""The rollups an import writes, batch by batch, are those a rebuild sums from its raw spans:
the histogram bins of a batch are counted per cell and kind of row at once (``_bins``), not
call by call, and a reprice's delta takes calls out of the same rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, import_lines, rebuild
from ollama_meter.ledger._jsonl import export_line
from ollama_meter.ledger._spans import update_costs
from ollama_meter.records import SpanRecord
from tests.ledger.test_import_roundtrip import ZONES, _call, _emptied
from tests.ledger.test_transfer import _tables


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_call(), min_size=1, max_size=60, unique_by=lambda s: s.id),
    batch=st.integers(1, 70),
    zone=st.sampled_from(ZONES),
    moved=st.lists(st.integers(0, 59), max_size=10),
    there=st.sets(st.integers(0, 59), max_size=20),
    twice=st.lists(st.integers(0, 59), max_size=10),
    data=st.data(),
)
def test_rollups_an_import_and_a_reprice_write_are_those_rebuilt_from_the_spans(
    db_url: str,
    spans: list[SpanRecord],
    batch: int,
    zone: str,
    moved: list[int],
    there: set[int],
    twice: list[int],
    data: Any,
) -> None:
    _emptied(db_url)  # hypothesis runs every example on the same database
    ledger = Ledger(db_url, zone=zone)
    try:
        # Spans the ledger has already and lines given twice: a batch's rollups, made before
        # its write for every span in it, are made again for the spans it really adds.
        before = {spans[at % len(spans)].id: spans[at % len(spans)] for at in there}
        import_lines(ledger, [export_line(span) for span in before.values()])
        given = spans + [spans[at % len(spans)] for at in twice]
        lines = [export_line(span) for span in data.draw(st.permutations(given))]
        summary = import_lines(ledger, lines, batch=batch)
        assert summary.added == len(spans) - len(before)
        chosen = {spans[at % len(spans)].id: spans[at % len(spans)] for at in moved}
        repriced = [  # another currency: the calls leave their rows for others
            replace(
                span,
                currency="EUR" if span.currency == "USD" else "USD",
                cost_fee=7,
                cost_total=span.cost_total - span.cost_fee + 7,
            )
            for span in chosen.values()
        ]
        if repriced:
            with ledger.write() as conn:
                assert len(update_costs(conn, repriced)) == len(repriced)
        written = _tables(ledger)
        rebuild(ledger.write, ledger.read)
        assert _tables(ledger) == written
    finally:
        ledger.dispose()
