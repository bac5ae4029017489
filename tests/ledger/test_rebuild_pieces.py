"""``ometer db rollup`` while gateways write: short write transactions, each span counted once.

A rebuild held the write lock for a whole day's cells (7 s for a day of 100,000 calls), so a
gateway writing meanwhile went to the spool. It now reads a day with no lock and writes the
difference in pieces; these tests pin that by counts, not times: what each of its write
transactions does, and what comes out when spans, another rebuild or a kill land between
any two of its transactions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import delete, event, select

from ollama_meter.ledger import Ledger, rebuild
from ollama_meter.ledger._cells import Grain
from ollama_meter.ledger._correct import PASS, PIECE_ROWS
from ollama_meter.ledger._meta import get_meta
from ollama_meter.ledger._rebuild import STOPPED
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, ROLLUPS
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import SpanRecord
from ollama_meter.records import NO_HOST
from tests.factories import make_span

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 10, tzinfo=BERLIN)
TABLES = (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS)


def _call(
    minute: int, second: int = 0, *, busy_s: int = 20, user: int = 0, host: int | None = 0
) -> SpanRecord:
    """A call ``minute`` minutes after :data:`DAY` began (before it: negative), busy for ``busy_s``
    (on server ``host``; None: a call sent to no server, whatever durations it says)."""
    at = DAY.astimezone(UTC) + timedelta(minutes=minute, seconds=second)
    return make_span(
        started_at=at,
        ended_at=at + timedelta(seconds=busy_s + 1),
        user=f"u{user}" if user else None,
        department=("sales", "legal")[user % 2],
        request_model=("llama3.1:8b", "qwen2.5:7b")[user % 3 % 2],
        upstream_host=NO_HOST if host is None else f"http://gpu{host}:11434",
        status=("ok", "error")[user % 5 == 4],
        prompt_eval_duration_ns=10**9,
        eval_duration_ns=busy_s * 10**9 - 10**9,
        latency_ns=(busy_s + 1) * 10**9,
        output_tokens=user * 7 % 300,
    )


def _tables(ledger: Ledger) -> dict[str, list[tuple[object, ...]]]:
    with ledger.read() as conn:
        return {
            table.name: sorted(tuple(row) for row in conn.execute(select(table)))
            for table in TABLES
        }


def _without_rollups(ledger: Ledger) -> None:
    with ledger.write() as conn:
        for table in TABLES:
            conn.execute(table.delete())


def _write_transactions(ledger: Ledger) -> list[list[str]]:
    """Every write transaction ``ledger`` makes from now on on SQLite, as the statements it ran
    (one per row of an executemany)."""
    found: list[list[str]] = []

    def trace(dbapi_connection: Any, _record: Any) -> None:
        current: list[list[str]] = []

        def seen(sql: str) -> None:
            if sql.startswith("BEGIN IMMEDIATE"):
                current[:] = [[]]
                found.append(current[0])
            elif sql in ("COMMIT", "ROLLBACK"):
                current.clear()
            elif current:
                current[0].append(sql)

        dbapi_connection.set_trace_callback(seen)

    event.listen(ledger.engine, "connect", trace)
    ledger.engine.dispose()  # connections pooled before are made again, traced
    return found


def test_a_busy_day_is_rebuilt_in_short_writes_that_read_no_span(sqlite_url: str) -> None:
    """A day's rebuild was one write transaction that read all its spans and wrote all its
    cells (for 100,000 calls, 7 s with the lock held): now no write reads a span, and none
    writes more than a piece of rows, however busy the day."""
    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    spans = [_call(n * 1440 // 2000, n % 60, user=n % 97, host=n % 3) for n in range(2000)]
    ledger.record(spans)
    kept = _tables(ledger)
    _without_rollups(ledger)  # as a bulk load outside ometer leaves it: every cell to write
    writes = _write_transactions(ledger)
    assert rebuild(ledger.write, ledger.read) == len(spans)
    assert _tables(ledger) == kept
    rows = sum(len(rows) for rows in kept.values())
    assert len(writes) > rows // PIECE_ROWS  # one day, in pieces
    assert not [sql for w in writes for sql in w if "FROM spans" in sql]
    # a piece: its rows, each added (or a busy minute deleted and inserted), and the meta
    assert max(len(w) for w in writes) <= 2 * PIECE_ROWS + 10


def test_the_busy_time_the_last_call_spent_past_midnight_is_rebuilt(db_url: str) -> None:
    """A rebuild stopped at the day the last call started: the busy time it spent past
    midnight (its minutes, and the busy cells of the next day and month) was lost when the
    rollups were built from raw spans (after a bulk load, an upgrade, a zone change)."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record([_call(21 * 1440 - 1, 50, busy_s=130)])  # 30 November 23:59:50 to 00:02:01
    kept = _tables(ledger)
    assert [row[:2] for row in kept["rollup_busy_cells"]] == [
        (1, 1_795_993_200),  # 30 November
        (1, 1_796_079_600),  # 1 December
        (2, 1_793_487_600),  # November
        (2, 1_796_079_600),  # December
    ]
    _without_rollups(ledger)
    assert rebuild(ledger.write, ledger.read) == 1
    assert _tables(ledger) == kept


def test_a_call_sent_to_no_server_is_no_busy_time_when_rebuilt(db_url: str) -> None:
    """A call that names no server (refused, or gone while queued) adds no busy minute or
    cell when recorded, and none when rebuilt, not even past midnight: no host's capacity."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record([_call(21 * 1440 - 1, 50, busy_s=130, host=None), _call(5)])
    kept = _tables(ledger)
    assert {row[1] for row in kept["rollup_busy"]} == {"http://gpu0:11434"}
    assert {row[2] for row in kept["rollup_busy_cells"]} == {"http://gpu0:11434"}
    _without_rollups(ledger)
    assert rebuild(ledger.write, ledger.read) == 2
    assert _tables(ledger) == kept


def test_a_month_whose_days_lost_every_call_is_summed_again(db_url: str, tmp_path: Path) -> None:
    """A rebuild stopped after correcting a month's days and before the month itself (every
    span of the month removed by hand): the next rebuild visited no day of that month, nor
    the month, which went on counting the calls it no longer had."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    reference = Ledger(f"sqlite:///{tmp_path / 'reference.db'}", zone="Europe/Berlin")
    kept = [_call(-40 * 1440), _call(40 * 1440)]  # 1 October and 20 December
    ledger.record([*kept, _call(0), _call(60, busy_s=50, host=1)])
    november = int(DAY.replace(day=1).timestamp())
    with ledger.write() as conn:  # as the stopped rebuild left November: its month rows only
        conn.execute(delete(SPANS).where(SPANS.c.id.not_in([s.id for s in kept])))
        conn.execute(BUSY.delete().where(BUSY.c.start >= november))
        for table in (ROLLUPS, HISTOGRAMS, BUSY_CELLS):
            month = table.c.grain == int(Grain.MONTH)
            conn.execute(table.delete().where(~month, table.c.start >= november))
    assert rebuild(ledger.write, ledger.read) == 2
    reference.record(kept)
    assert _tables(ledger) == _tables(reference)


_SPAN = st.builds(
    _call,
    minute=st.integers(-60, 3 * 24).map(lambda n: n * 20),
    second=st.integers(0, 59),
    busy_s=st.sampled_from([1, 50, 130]),
    user=st.integers(0, 6),
    host=st.sampled_from([0, 1, None]),
)
_DURING = st.one_of(
    st.tuples(st.just("spans"), st.lists(_SPAN, min_size=1, max_size=4)),
    st.tuples(st.just("again"), st.integers(0, 30)),  # re-record a span the ledger had
    st.tuples(st.just("rebuild"), st.just(0)),  # another rebuild, all of it
)


class _Killed(BaseException):
    pass


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_SPAN, min_size=1, max_size=30),
    state=st.sampled_from(["kept", "none", "some rows lost", "spans removed by hand"]),
    during=st.dictionaries(st.integers(0, 40), _DURING, max_size=6),
    killed_at=st.none() | st.integers(1, 40),
)
@example(  # a call recorded again between the read of its day and the write: its busy time was lost
    spans=[_call(-520, busy_s=1), _call(180, busy_s=50, host=1)],
    state="spans removed by hand",
    during={4: ("again", 0)},  # just before the first day's write
    killed_at=None,
)
@example(  # stopped with no span left: the next open marked it done, rollups as they were
    spans=[_call(0, busy_s=1)], state="spans removed by hand", during={}, killed_at=2
)
@example(  # stopped before the month of days with no span left: the month was never redone
    spans=[_call(0, busy_s=1)], state="spans removed by hand", during={}, killed_at=5
)
def test_spans_written_during_a_rebuild_are_counted_once(
    db_url: str,
    tmp_path: Path,
    spans: list[SpanRecord],
    state: str,
    during: dict[int, tuple[str, Any]],
    killed_at: int | None,
) -> None:
    """Whatever the rollups held, and whatever is written between any two of a rebuild's
    transactions (new spans, spans it has, a whole other rebuild), or if it is stopped there,
    each span is counted once in every cell: quarter, day, month, bins, busy minutes and
    their sums, as a ledger that recorded the same spans has them."""
    ledger, writer = Ledger(db_url, zone="Europe/Berlin"), Ledger(db_url, zone="Europe/Berlin")
    reference = Ledger(f"sqlite:///{tmp_path / 'reference.db'}", zone="Europe/Berlin")
    for each in (ledger, reference):  # hypothesis runs the example again on the same ledgers
        with each.write() as conn:
            conn.execute(delete(SPANS))
        _without_rollups(each)
    ledger.record(spans)
    kept = spans[1::2] if state.startswith("spans") else spans
    if state == "none":
        _without_rollups(ledger)
    elif state == "some rows lost":
        with ledger.write() as conn:
            for table in TABLES:
                conn.execute(table.delete().where(table.c.start % 3 == 0))
    elif state == "spans removed by hand":  # their cells stay, with nothing to build them from
        with ledger.write() as conn:
            conn.execute(delete(SPANS).where(SPANS.c.id.not_in([s.id for s in kept])))
    written = list(kept)
    begun = 0

    def meanwhile(_conn: Any) -> None:
        nonlocal begun
        begun += 1
        what, value = during.get(begun, ("", None))
        if what == "spans":
            writer.record(value)
            written.extend(value)
        elif what == "again":
            writer.record([spans[value % len(spans)]])
            if spans[value % len(spans)] not in written:
                written.append(spans[value % len(spans)])
        elif what == "rebuild":
            rebuild(writer.write, writer.read)
        if begun == killed_at:
            raise _Killed

    # As each transaction takes a connection: the last one is over, and holds no lock.
    event.listen(ledger.engine, "engine_connect", meanwhile)
    try:
        rebuild(ledger.write, ledger.read)
    except _Killed:
        event.remove(ledger.engine, "engine_connect", meanwhile)
        with ledger.read() as conn:  # once begun (its first write), it says it stopped
            assert get_meta(conn, "rebuilding") == (STOPPED if begun > 1 else None)
        if begun > 1:
            Ledger(db_url).dispose()  # the next to open it finishes it
        else:  # stopped before it changed anything: run again
            rebuild(ledger.write, ledger.read)
    else:
        event.remove(ledger.engine, "engine_connect", meanwhile)
        # Reads and writes (bounds, the days', the months', the marker's): fewer when another
        # rebuild run in between left this one less to correct.
        assert begun >= (3 if any(what == "rebuild" for what, _ in during.values()) else 7)
    reference.record(written)
    assert _tables(ledger) == _tables(reference)
    for each in (ledger, writer, reference):
        each.dispose()


def test_a_rebuild_killed_between_pieces_is_finished_by_the_next_open(tmp_path: Path) -> None:
    """``kill -9`` of ``ometer db rollup`` between two pieces of a day: the ledger says a
    rebuild is unfinished (its process is gone), and the next ``ometer`` finishes it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, zone="Europe/Berlin")
    ledger.record(
        [_call(n * 4 * 1440 // 6000, n % 60, user=n % 97, host=n % 3) for n in range(6000)]
    )
    kept = _tables(ledger)
    _without_rollups(ledger)
    command = [sys.executable, "-m", "ollama_meter", "db", "rollup", "--db", url]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pieces = set()
        while len(pieces) < 3 and process.poll() is None:  # a few pieces of the first day
            with ledger.read() as conn:
                pieces.add(get_meta(conn, PASS))
            time.sleep(0.001)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    with ledger.read() as conn:
        beat = get_meta(conn, "rebuilding")
    assert beat is not None and beat.split()[1] == str(process.pid)
    assert _tables(ledger) != kept
    ledger.dispose()
    assert _tables(Ledger(url)) == kept
