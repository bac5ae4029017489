"""`db import`, `db prune` and `db rollup --zone` landing between each other's statements (other
processes' on the same ledger): every span is counted once, reports of pruned days do not
move, and the rollups end as a rebuild from the raw spans gives them."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from sqlalchemy import event

from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger import Ledger, import_lines, prune, rebuild, span_to_dict
from tests.ledger.test_transfer import NOW, _monthly, _spans, _tables


def test_an_import_a_prune_lands_in_counts_no_pruned_span_twice(pg_server: str | None) -> None:
    """On PostgreSQL a batch read the prune horizon before it took the rollups' lock: a prune
    that recorded its horizon and removed the ledger's old spans meanwhile left the batch
    adding them back, counted a second time in rollups that already held them."""
    from tests.conftest import _fresh_pg_database

    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    url = _fresh_pg_database(pg_server)
    ledger, pruner = Ledger(url, zone="Europe/Berlin"), Ledger(url, zone="Europe/Berlin")
    ledger.record(_spans())
    lines = [json.dumps(span_to_dict(span)).encode() for span in _spans()]
    kept, bills = _tables(ledger), [_monthly(ledger, m) for m in ("2026-10", "2026-11")]
    pruned: list[Any] = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def prune_now(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_xact_lock_shared" in statement and not pruned:
            pruned.append(prune(pruner, 30, now=NOW))  # another process's, to the end

    summary = import_lines(ledger, lines)
    assert pruned and pruned[0].removed > 0
    assert (summary.added, summary.pruned) == (0, pruned[0].removed)
    assert _tables(ledger) == kept
    assert [_monthly(ledger, m) for m in ("2026-10", "2026-11")] == bills
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    ledger.dispose()
    pruner.dispose()


@pytest.mark.parametrize("at", [1, 2, 3])
def test_a_zone_change_and_a_prune_at_once_never_both_go_ahead(db_url: str, at: int) -> None:
    """`db rollup --zone` read the prune horizon in one transaction and marked the rollups to
    be cut again in the next: a prune (a gateway's daily one) that landed between the two
    went ahead too, and the pruned days, cut again at the new zone from no spans, reported
    calls of -1 and +1 on neighbouring days. Whichever comes first, the other is refused."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    pruner = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans())
    months = ("2026-10", "2026-11", "2026-12")
    bills = [_monthly(ledger, m) for m in months]
    connections, removed = [], []

    @event.listens_for(ledger.engine, "engine_connect")
    def prune_now(conn: Any) -> None:
        connections.append(conn)
        if len(connections) == at:  # another process's, between two of the rebuild's
            with contextlib.suppress(LedgerError):  # refused: the cells are being cut again
                removed.append(prune(pruner, 40, now=NOW).removed)

    with contextlib.suppress(ValidationError):  # refused: raw spans were pruned
        rebuild(ledger.write, ledger.read, zone="UTC")
    event.remove(ledger.engine, "engine_connect", prune_now)
    assert len(connections) >= at
    assert (ledger.zone() == "UTC") != bool(removed and removed[0])
    assert [_monthly(ledger, m) for m in months] == bills
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    ledger.dispose()
    pruner.dispose()
