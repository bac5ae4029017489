"""Span and rollup rows edited by hand in SQL (or written by another tool), to values ometer never writes.

SQLite's type affinity lets an integer column hold ``1500.5``, ``'n/a'`` or a blob, a time
column text; a row may hold negative tokens, a lowercase currency, an unknown status. A span
with a REAL cost made ``ometer log`` exit 70 (a bug in ometer) and the rollups truncated it.
Each reader now gives the exact answer (a value SQLite stores as an integer, like ``1500.0``
or ``'250'``, is that integer) or one line naming the table, span, column and value, and the
UPDATE that fixes it: a data problem, never a bug, never a silently wrong sum.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter, close_ledgers
from ollama_meter.ledger._aggregate import SUMMED
from ollama_meter.ledger.models import ROLLUP_HISTOGRAMS as HISTOGRAMS, ROLLUPS, SPANS
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, opened

READERS = (
    ("log",),
    ("log", "--json"),
    ("report", "--since", "2000-01-01"),
    ("chargeback", "--month", datetime.now(UTC).strftime("%Y-%m"), "--fixed-cost", "100"),
    ("perf",),
    ("budget", "status"),
)


def _span_ledger(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    monkeypatch.setenv("OMETER_DB_URL", url)
    assert cli("pricing", "set", "llama3.1:*", "--per-request", "1").code == 0
    assert cli("budget", "set", "--tenant", "acme", "sales", "--daily", "5").code == 0
    done = cli("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 0, done.stderr
    return url


_MADE: list[Path] = []
"""The ledger ``_span_ledger`` made for the process's first example, all in its one file."""


def _copied_span_ledger(
    cli: Any, folder: Path, factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A copy of a ledger ``_span_ledger`` made: three commands made once, not each example
    (half of an example's time)."""
    if not _MADE:
        made = factory.mktemp("made")
        url = _span_ledger(cli, made, monkeypatch)
        close_ledgers()
        with sa.create_engine(url).connect() as conn:  # the WAL's pages into the file
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        _MADE.append(made / "l.db")
    shutil.copy(_MADE[0], folder / "l.db")
    url = f"sqlite:///{folder / 'l.db'}"
    monkeypatch.setenv("OMETER_DB_URL", url)
    return url


def _edit(url: str, sql: str, *params: object) -> Any:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql, params)
        span_id = conn.exec_driver_sql("SELECT id FROM spans").scalars().first()
    engine.dispose()
    return span_id


@pytest.mark.parametrize("reader", READERS, ids=" ".join)
def test_a_real_cost_is_named_not_a_bug(
    cli: Any,
    emulator: OllamaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reader: tuple[str, ...],
) -> None:
    url = _span_ledger(cli, tmp_path, monkeypatch)
    span_id = _edit(url, "UPDATE spans SET cost_total = 1500.5")
    done = cli(*reader)
    assert done.code != 70, done.stderr
    assert done.code == 0 or done.stderr.startswith(
        f"error: span {span_id} in the ledger cannot be read: its cost_total is 1500.5, not a whole number from 0 to"
    ), done


SPAN_COLUMNS = tuple(column.name for column in SPANS.c)
HOSTILE = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([None, 0, -5, 1, 2, 1500.0, 1500.5, "250", "n/a", "", "usd", "US", "EUR"]),
    st.sampled_from(["9223372036854775808", 2.0**64, -0.5, b"\x00\x01", "2026-01-01", "{}"]),
    st.sampled_from(["ok", "error", "weird", "chat", '{"a": 1}', "[1]", "not json", "x" * 300]),
    st.sampled_from(["01HZZZZZZZZZZZZZZZZZZZZZZZ", "01hzz", "a\nb", "é" * 70]),
    st.text(max_size=12).filter(lambda t: "\x00" not in t),
    st.floats(allow_nan=False, allow_infinity=False),
)
HALF_REBUILT = "error: the rollups are being rebuilt from the raw spans (ometer db rollup): "
TIME = "error: a span's time in the ledger cannot be read: it is "
ALL_READERS = (
    *READERS,
    ("db", "export"),
    ("db", "rollup"),
)


def _stored_as(url: str, column: str) -> tuple[object, str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        value, kind = conn.exec_driver_sql(
            f'SELECT "{column}", typeof("{column}") FROM spans'
        ).one()
    engine.dispose()
    return value, kind


@settings(
    max_examples=30,  # each runs a dozen commands; 60 took 115 s of a loaded CI's time
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_reader_reads_a_hostile_span_exactly_or_names_it(
    cli: Any,
    emulator: OllamaEmulator,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
) -> None:
    url = _copied_span_ledger(cli, tmp_path_factory.mktemp("span"), tmp_path_factory, monkeypatch)
    column = data.draw(st.sampled_from(SPAN_COLUMNS), label="column")
    value = data.draw(HOSTILE, label="value")
    try:
        span_id = _edit(url, f'UPDATE spans SET "{column}" = ?', value)
    except sa.exc.IntegrityError:
        return  # the schema refuses it: no one can store it
    exported = cli("db", "export")
    if exported.code == 0:  # an export of such a ledger imports, or says which line is wrong
        dump = Path(url.removeprefix("sqlite:///")).with_suffix(".jsonl")
        dump.write_text(exported.stdout)
        other = f"sqlite:///{dump.with_suffix('.other.db')}"
        done = cli("db", "import", str(dump), "--db", other)
        assert done.code in (0, 1, 2) and "bug in ometer" not in done.stderr, done
    for reader in (*ALL_READERS, ("db", "prune", "--keep-days", "1")):
        done = cli(*reader)
        assert done.code in (0, 1), (reader, done)
        if done.code == 1:
            line = done.stderr.strip()
            assert "\n" not in line, (reader, line)
            if line.startswith(TIME) and column in ("started_at", "ended_at"):
                continue  # a time read alone (the days a rebuild reads): the query to find it
            if reader[:2] == ("db", "prune") and line.startswith(HALF_REBUILT):
                continue  # the `db rollup` above stopped at the span: it says to finish it
            plain = isinstance(span_id, str) and span_id.isprintable() and "'" not in span_id
            named = span_id if plain and len(span_id) <= 80 else repr(span_id)[:77]
            assert line.startswith(f"error: span {named}"), (reader, line)
            assert f"its {column} is " in line and "UPDATE spans SET" in line, (reader, line)
    close_ledgers()  # as each command's process would: 30 examples' ledgers kept open otherwise


ROLLUP_MEASURES = tuple(
    column.name
    for column in ROLLUPS.c
    if column.name not in {"grain", "start"} and not isinstance(column.type, sa.String)
)
SUMS = (
    ("report", "--since", "2000-01-01"),
    ("report", "--since", "2000-01-01", "-f", "json"),
    ("budget", "status"),
    READERS[3],  # chargeback
)


@pytest.mark.parametrize("value", [1500.5, "n/a", b"\x01", 2.0**64, -0.5])
@pytest.mark.parametrize("column", ROLLUP_MEASURES)
def test_a_rollup_sum_of_what_is_no_whole_number_names_the_row(
    cli: Any,
    emulator: OllamaEmulator,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    column: str,
    value: object,
) -> None:
    """SQLite's SUM over a REAL is a REAL, which the sums cut to a whole number (a report a
    micro-unit short), and ``sign * 'n/a'`` is 0 (a cost of 'n/a' summed as none). A sum a
    reader shows now names the row; a column no reader sums leaves its answers exact."""
    url = _copied_span_ledger(cli, tmp_path, tmp_path_factory, monkeypatch)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE rollups SET {column} = ?", (value,))
    engine.dispose()
    for reader in SUMS:
        done = cli(*reader)
        line = done.stderr.strip()
        if column not in SUMMED and done.code == 0:
            continue  # no reader sums it: what they show is exact
        assert done.code == 1, (reader, done)
        assert line.startswith("error: a rollups row in the ledger cannot be read: its "), line
        assert f"{column} is {value!r}" in line and "ometer db rollup" in line, line


USAGE_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "prompt_eval_duration_ns",
    "eval_duration_ns",
    "load_duration_ns",
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(column=st.sampled_from(USAGE_COLUMNS), value=HOSTILE)
def test_a_hostile_span_never_counts_in_the_history_a_new_call_is_bounded_by(
    tmp_path_factory: pytest.TempPathFactory, column: str, value: object
) -> None:
    """Each call to a time-priced model is bounded by the model's recent calls, read from
    the raw spans: a 'n/a' there failed every new call (``'n/a' > 0``), a REAL bounded it
    by a fraction. A row that holds no whole number in range is left out of the history."""
    url = f"sqlite:///{tmp_path_factory.mktemp('usage') / 'l.db'}"
    with opened(url) as ledger:
        good = make_span(input_tokens=10, output_tokens=20, prompt_eval_duration_ns=1000)
        bad = make_span(input_tokens=11, output_tokens=21, prompt_eval_duration_ns=1001)
        ledger.record([good, bad])
        try:
            _edit(url, f'UPDATE spans SET "{column}" = ? WHERE id = ?', value, bad.id)
        except sa.exc.IntegrityError:
            return
        history = ledger.recent_usage(good.request_model)
        for past in history:
            for name in ("input_tokens", "output_tokens", "prompt_eval_ns", "eval_ns", "load_ns"):
                number = getattr(past, name)
                assert type(number) is int and number >= 0, history
        assert len(history) in (1, 2)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("input_tokens", -5, "a whole number from 0 to"),
        ("cost_total", -1, "a whole number from 0 to"),
        ("latency_ns", -1, "a whole number from 0 to"),
        ("currency", "usd", "a 3-letter code in capitals, like USD"),
        ("currency", "US", "a 3-letter code in capitals, like USD"),
        ("status", "weird", "one of client_abort, error, interrupted, ok, rejected"),
        ("token_source", "guessed", "one of estimated, reported"),
        ("http_status", 42, "an HTTP status from 100 to 999, or NULL"),
        ("price_rule_id", 0, "a price rule's id, or NULL"),
    ],
)
def test_values_no_type_refuses_are_named_on_every_backend(
    db_url: str, column: str, value: object, expected: str
) -> None:
    """PostgreSQL enforces types, not these values: a negative count or cost, a currency
    in lowercase, a status no report knows were read as they were."""
    ledger = Ledger(db_url)
    span = make_span()
    ledger.record([span])
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.update(SPANS).values({column: value}))
    engine.dispose()
    with pytest.raises(LedgerError) as named:
        ledger.latest(SpanFilter(), 5)
    shown = repr(value) if isinstance(value, str) else str(value)
    assert str(named.value).startswith(
        f"span {span.id} in the ledger cannot be read: its {column} is {shown}, not {expected}"
    ), named.value
    assert str(named.value).endswith(
        f"(`DELETE FROM spans WHERE id = '{span.id}'`), then run `ometer db rollup`"
    )


@pytest.mark.parametrize("value", [2.5, "n/a", b"\x01"])
@pytest.mark.parametrize(
    ("table", "column", "reader"),
    [
        ("rollup_histograms", "b{bin}", ("perf", "--since", "2026-11-01", "--until", "2026-11-30")),
        ("rollup_busy_cells", "busy_us", ("chargeback", "--month", "2026-11", "--fixed-cost", "100")),
        ("rollup_busy_cells", "calls", ("chargeback", "--month", "2026-11", "--fixed-cost", "100")),
    ],
)  # fmt: skip
def test_a_histogram_or_busy_row_of_no_whole_number_names_the_row(
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    column: str,
    reader: tuple[str, ...],
    value: object,
) -> None:
    """Percentiles and GPU time of closed days come from these rows: a bin of 2.5 calls was
    cut to 2, one of 'n/a' dropped, in silence. Now the row is named."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    monkeypatch.setenv("OMETER_DB_URL", url)
    ended = datetime(2026, 11, 10, 12, 0, 3, tzinfo=UTC)
    Ledger(url).record(
        [make_span(latency_ns=2_000_000, eval_duration_ns=10**9, ended_at=ended) for _ in range(3)]
    )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if "{bin}" in column:  # a bin that holds calls
            held = [c.name for c in HISTOGRAMS.c if c.name.startswith("b")]
            row = conn.execute(sa.select(HISTOGRAMS).where(HISTOGRAMS.c.grain == 1)).first()
            assert row is not None
            column = next(name for name in held if row._mapping[name])
        conn.exec_driver_sql(f"UPDATE {table} SET {column} = ?", (value,))
    engine.dispose()
    done = cli(*reader)
    assert done.code == 1, done
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: a {table} row in the ledger cannot be read: its {column} is {value!r}"
    ), line
    assert "ometer db rollup" in line, line
