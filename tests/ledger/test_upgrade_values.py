"""Span values an older SQLite ledger took where ometer keeps whole numbers, met by an upgrade.

SQLite stores what it is given: a column of integers keeps a fraction (``1500.5``) or text
(``'n/a'``) that a hand edit or another tool wrote. An upgrade built the rollups from them:
the fraction was cut off without a word (half a micro-unit gone from every report), and
``ometer log`` then failed on the span as "a bug in ometer". The upgrade stops instead,
before it changes anything, naming each span and value to mend.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers, upgrade
from ollama_meter.ledger._engine import create_ledger_engine
from tests.integrity.test_cli_errors import one_error_line

_COLUMNS = (
    "id, trace_id, span_id, started_at, tenant, department, source, operation, upstream_host, "
    "request_model, stream, status, input_tokens, output_tokens, token_source, latency_ns, "
    "cost_tokens, cost_compute, cost_energy, cost_fee, cost_total, currency, unpriced, tags"
)


def _at(revision: str, path: Path, spans: list[tuple[str, object, object, object]]) -> str:
    """A SQLite ledger at ``revision`` holding a span per (id, input_tokens, latency_ns,
    cost_total), stored as given."""
    url = f"sqlite:///{path}"
    engine = create_ledger_engine(url)
    upgrade(engine, revision)
    engine.dispose()
    started = "'2026-11-01 10:00:00.000000'" if revision < "0006" else "1793527200000000"
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            f"INSERT INTO spans ({_COLUMNS}) VALUES (?, 't', 's', {started}, 'acme', 'sales', "
            "'cli', 'chat', 'h', 'm', 0, 'ok', ?, 3, 'reported', ?, ?, 0, 0, 0, ?, 'USD', 0, '{}')",
            [(i, tokens, latency, cost, cost) for i, tokens, latency, cost in spans],
        )
    return url


def _dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


@pytest.mark.parametrize("revision", ["0005", "0012"])
@pytest.mark.parametrize(
    ("tokens", "latency", "cost", "shown"),
    [
        (12, None, 1500.5, "cost_tokens 1500.5, cost_total 1500.5"),
        (12.7, None, 1500, "input_tokens 12.7"),
        (12, "n/a", 1500, "latency_ns 'n/a'"),
        (12, None, b"\x01", "cost_tokens b'\\x01', cost_total b'\\x01'"),
    ],
)
def test_a_fraction_or_text_where_a_whole_number_lives_stops_the_upgrade_naming_the_span(
    cli: Any, tmp_path: Path, revision: str, tokens: object, latency: object, cost: object,
    shown: str,
) -> None:  # fmt: skip
    path = tmp_path / "ledger.db"
    url = _at(revision, path, [("01GOOD", 12, None, 1500), ("01ODD", tokens, latency, cost)])
    before = _dump(path)
    with pytest.raises(LedgerError) as raised:
        Ledger(url)
    said = str(raised.value)
    assert f"span '01ODD' has {shown}" in said and "nothing was changed" in said, said
    assert "ometer db upgrade" in said and "01GOOD" not in said, said
    close_ledgers()
    assert f"span '01ODD' has {shown}" in one_error_line(cli("db", "upgrade", "--db", url))
    assert _dump(path) == before


def test_whole_numbers_sqlite_stored_as_given_are_carried_over(tmp_path: Path) -> None:
    """``1500.0`` and ``'250'`` are whole numbers: SQLite keeps them as integers already."""
    path = tmp_path / "ledger.db"
    url = _at("0005", path, [("01A", 12.0, "900", 1500.0), ("01B", "7", None, "250")])
    ledger = Ledger(url)
    spans = {
        s.id: (s.input_tokens, s.latency_ns, s.cost_total) for s in ledger.latest(SpanFilter(), 9)
    }
    assert spans == {"01A": (12, 900, 1500), "01B": (7, None, 250)}
    ledger.dispose()
