"""What `db import` says it did is what the lines were, however its batches fall."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings, strategies as st

from ollama_meter.ledger import import_lines, prune
from ollama_meter.ledger._jsonl import export_line
from tests.factories import make_span, opened

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@settings(max_examples=20, deadline=None)
@given(
    lines=st.lists(st.sampled_from(["early", "late", "held"]), min_size=1, max_size=8),
    batch=st.integers(1, 8),
)
def test_the_counts_an_import_says_do_not_hang_on_where_its_batches_fall(
    lines: list[str], batch: int
) -> None:
    """A span before the prune horizon given twice was skipped twice when its lines fell in
    two batches, and skipped once and counted as "already there" (where the ledger never
    had it) when they fell in one: the same file said other counts at other batch sizes."""
    early = make_span(started_at=NOW - timedelta(days=20))  # another ledger's, before it
    held = make_span(started_at=NOW - timedelta(hours=1))  # the ledger has it
    late = make_span(started_at=NOW - timedelta(hours=2))  # new to it
    spans = {"early": early, "late": late, "held": held}
    data = [export_line(spans[what]) for what in lines]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        with opened(url) as ledger:
            ledger.record([make_span(started_at=NOW - timedelta(days=30)), held])
            assert prune(ledger, 10, now=NOW).removed == 1
            summary = import_lines(ledger, data, batch=batch)
    # every line of a span before the horizon is skipped; a line of one it has, or of one
    # an earlier line added, is already there
    assert (summary.read, summary.added, summary.pruned) == (
        len(lines),
        min(lines.count("late"), 1),
        lines.count("early"),
    )
    assert summary.present == lines.count("held") + max(lines.count("late") - 1, 0)
