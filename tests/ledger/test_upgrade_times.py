"""Span times a SQLite ledger from before 0006 held as text, carried into integer microseconds.

Before 0006 a span's times were text on SQLite. ometer wrote them as SQLAlchemy does
(``2026-11-01 10:00:00.250000``, UTC), but a ledger filled by another tool (Python's
``sqlite3`` with aware datetimes, a CSV import, a hand edit) holds ISO 8601 as it comes: a
``T``, a ``Z``, an offset, a short fraction. 0006 read every time as if it were ometer's:
``10:00:00+02:00`` became 10:00:00.000002 UTC, two hours and two microseconds off, and a
time it could not read at all failed the migration on a bare constraint (a start) or was
dropped without a word (an end).
"""

from __future__ import annotations

import functools
import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers, upgrade
from ollama_meter.ledger._engine import create_ledger_engine
from tests.integrity.test_cli_errors import one_error_line

_COLUMNS = (
    "id, trace_id, span_id, started_at, ended_at, tenant, department, source, operation, "
    "upstream_host, request_model, stream, status, input_tokens, output_tokens, token_source, "
    "cost_tokens, cost_compute, cost_energy, cost_fee, cost_total, currency, unpriced, tags"
)


@functools.cache
def _empty_0005(folder: Path) -> Path:
    """A SQLite ledger at revision 0005 holding nothing, made once in ``folder`` (the session's
    base folder) and copied for each ledger: the migrations to 0005, run for each generated
    example, took 57 ms of CPU each under coverage; a copy takes 3 ms."""
    made = folder / "empty-0005.db"
    engine = create_ledger_engine(f"sqlite:///{made}")
    upgrade(engine, "0005")
    engine.dispose()
    with closing(sqlite3.connect(made)) as db:  # all in the one file, to be copied alone
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return made


def _at_0005(path: Path, rows: list[tuple[str, object, object]]) -> str:
    """A SQLite ledger at revision 0005 holding a span per (id, started_at, ended_at), the
    times stored exactly as given."""
    url = f"sqlite:///{path}"
    shutil.copyfile(_empty_0005(path.parent.parent), path)
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            f"INSERT INTO spans ({_COLUMNS}) VALUES (?, 't', 's', ?, ?, 'acme', 'sales', 'cli', "
            "'chat', 'h', 'm', 0, 'ok', 1, 1, 'reported', 5, 0, 0, 0, 5, 'USD', 0, '{}')",
            rows,
        )
    return url


def _dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


_WRITTEN = st.sampled_from(["ometer", "short", "T", "Z", "offset", "fraction"])
_INSTANT = st.datetimes(
    min_value=datetime(1960, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def _as_text(at: datetime, how: str, offset_minutes: int) -> str:
    """``at`` as a tool may have written it into a SQLite ledger before 0006."""
    naive = at.replace(tzinfo=None)
    if how == "ometer":  # SQLAlchemy's own storage format
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f")
    if how == "short":  # no fraction when there is none (ometer's tests wrote these)
        return str(naive) if at.microsecond else naive.strftime("%Y-%m-%d %H:%M:%S")
    if how == "T":
        return naive.isoformat()
    if how == "Z":
        return naive.isoformat() + "Z"
    if how == "offset":  # sqlite3's adapter for an aware datetime: isoformat(" ")
        return at.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat(" ")
    # A fraction of as many digits as it needs.
    return naive.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    spans=st.lists(
        st.tuples(
            _INSTANT,
            _WRITTEN,
            st.integers(-14 * 60, 14 * 60),
            st.none() | st.timedeltas(timedelta(0), timedelta(hours=3)),
            _WRITTEN,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_iso_time_a_pre_0006_ledger_holds_keeps_its_instant(
    tmp_path_factory: pytest.TempPathFactory, spans: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("times") / "ledger.db"
    rows: list[tuple[str, object, object]] = []
    expected: dict[str, tuple[datetime, datetime | None]] = {}
    for index, (started, how, offset, took, ended_how) in enumerate(spans):
        ended = None if took is None else started + took
        row_id = f"{index:026d}"
        rows.append(
            (
                row_id,
                _as_text(started, how, offset),
                None if ended is None else _as_text(ended, ended_how, -offset),
            )
        )
        expected[row_id] = (started, ended)
    ledger = Ledger(_at_0005(path, rows))  # migrates to the head
    found = {s.id: (s.started_at, s.ended_at) for s in ledger.latest(SpanFilter(), 100)}
    ledger.dispose()
    assert found == expected, rows


@pytest.mark.parametrize(
    ("started", "ended", "shown"),
    [
        ("yesterday", None, "started_at 'yesterday'"),
        ("", None, "started_at ''"),
        ("2026-13-01 10:00:00.000000", None, "started_at '2026-13-01 10:00:00.000000'"),
        (1_764_590_400, None, "started_at 1764590400"),
        ("2026-11-01 10:00:00.000000", "soon\x1b[2J", "ended_at 'soon\\x1b[2J'"),
    ],
)
def test_a_time_no_one_can_read_stops_the_upgrade_naming_the_span_and_changes_nothing(
    cli: Any, tmp_path: Path, started: object, ended: object, shown: str
) -> None:
    path = tmp_path / "ledger.db"
    good = ("01GOOD", "2026-11-01 09:00:00.000000", None)
    url = _at_0005(path, [good, ("01BAD", started, ended)])
    before = _dump(path)
    with pytest.raises(LedgerError) as raised:
        Ledger(url)
    said = str(raised.value)
    assert f"span '01BAD' has {shown}" in said and "nothing was changed" in said, said
    assert "UPDATE spans SET" in said and "ometer db upgrade" in said, said
    close_ledgers()
    line = one_error_line(cli("db", "upgrade", "--db", url))
    assert f"span '01BAD' has {shown}" in line, line
    assert _dump(path) == before  # still the 0005 ledger it was, every row and table
    with closing(sqlite3.connect(path)) as db, db:  # as the error says to
        db.execute("UPDATE spans SET started_at = '2026-11-01 10:00:00', ended_at = NULL "
                   "WHERE id = '01BAD'")  # fmt: skip
    ledger = Ledger(url)
    assert {s.id: s.started_at for s in ledger.latest(SpanFilter(), 10)} == {
        "01GOOD": datetime(2026, 11, 1, 9, tzinfo=UTC),
        "01BAD": datetime(2026, 11, 1, 10, tzinfo=UTC),
    }
    ledger.dispose()
