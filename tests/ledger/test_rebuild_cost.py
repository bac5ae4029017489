"""What a rebuild does for each day it reads does not grow with the days: counted, not timed.

A rebuild of rollups that are right (``ometer db rollup`` run again, a test checking its
rollups against the raw spans) spent most of its time on each day's fixed cost: a write
transaction with nothing to correct, and its queries built anew (a 30-column select and its
cache key took longer than the read). Days whose cells are right are now only read, and the
queries are built once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from ollama_meter.ledger import Ledger, rebuild
from tests.factories import make_span
from tests.ledger.test_transfer import _tables

WRITES = ("INSERT", "UPDATE", "DELETE")


def _rebuilt(url: str, days: int) -> tuple[int, int, int]:
    """Rebuild the rollups of calls over ``days`` days, then again: the write statements and
    the distinct statements the second rebuild ran, and the spans it read."""
    ledger = Ledger(url, zone="Europe/Berlin")
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [make_span(started_at=at + timedelta(hours=7 * n)) for n in range(days * 24 // 7)]
    )
    rebuild(ledger.write, ledger.read)
    kept = _tables(ledger)
    writes: list[str] = []
    built: dict[int, Any] = {}  # held, so that no id is taken again

    def executed(_conn: Any, statement: Any, *_: Any) -> None:
        built[id(statement)] = statement

    def sent(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.lstrip().upper().startswith(WRITES):
            writes.append(sql)

    event.listen(ledger.engine, "before_execute", executed)
    event.listen(ledger.engine, "before_cursor_execute", sent)
    try:
        count = rebuild(ledger.write, ledger.read)
    finally:
        event.remove(ledger.engine, "before_execute", executed)
        event.remove(ledger.engine, "before_cursor_execute", sent)
    assert _tables(ledger) == kept
    ledger.dispose()
    return len(writes), len(built), count


@pytest.mark.parametrize("days", [2, 25])  # in one month (each month is summed apart)
def test_a_rebuild_of_right_rollups_writes_and_builds_no_more_for_more_days(
    tmp_path_factory: pytest.TempPathFactory, days: int
) -> None:
    """One day, or ``days`` days of calls: the same few writes (the rebuild saying it began
    and that it is done) and the same statements, whatever the range."""
    one_url = f"sqlite:///{tmp_path_factory.mktemp('one') / 'l.db'}"
    many_url = f"sqlite:///{tmp_path_factory.mktemp('many') / 'l.db'}"
    one_writes, one_built, one_count = _rebuilt(one_url, 1)
    writes, built, count = _rebuilt(many_url, days)
    assert (one_count, count) == (24 // 7, days * 24 // 7)
    assert (writes, built) == (one_writes, one_built)
