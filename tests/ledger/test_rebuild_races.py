"""``ometer db rollup`` racing every other command that moves spans or cells.

Between any two of a rebuild's transactions (its day reads, its pieces, its month sums) a
second process reprices, imports an overlapping export, prunes, changes the zone, or
rebuilds; whatever the rollups held before, every rollup table ends as a ledger fed the
same spans from nothing has it, row for row (no rows of zeros either).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import delete, event

from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger import Ledger, import_lines, prune, rebuild
from ollama_meter.ledger._jsonl import span_to_dict
from ollama_meter.ledger._meta import pruned_before, set_meta, zone_name
from ollama_meter.ledger._spans import row_to_span, select_spans
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import SpanRecord, new_span_row_id, reprice
from ollama_meter.pricing import PriceBook
from ollama_meter.records import MAX_CALL_COST, MAX_DURATION_NS, MAX_TOKENS
from tests.factories import token_prices
from tests.ledger.test_rebuild_pieces import _SPAN, TABLES, _call, _tables, _without_rollups

BERLIN = ZoneInfo("Europe/Berlin")
BOOKS = (
    PriceBook(
        [replace(token_prices("llama3.1:*"), currency="EUR", id=1)], tz=BERLIN, currency="EUR"
    ),
    PriceBook([token_prices("*", id=2)], tz=BERLIN, currency="USD"),
)
"""Llama in EUR and qwen unpriced (both move currency), or everything in USD."""

_DURING = st.one_of(
    st.tuples(st.just("spans"), st.lists(_SPAN, min_size=1, max_size=3)),
    st.tuples(st.just("import"), st.integers(0, 30)),  # an export of some it has, and new ones
    st.tuples(st.just("reprice"), st.integers(0, 1)),
    st.tuples(st.just("prune"), st.integers(1, 3)),  # keep days on 12 November
    st.tuples(st.just("zone"), st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
    st.tuples(st.just("rebuild"), st.just(0)),
)


def _spans_now(ledger: Ledger) -> dict[str, SpanRecord]:
    with ledger.read() as conn:
        return {
            span.id: span for span in map(row_to_span, conn.execute(select_spans(content=False)))
        }


def _since(rows: dict[str, list[tuple[Any, ...]]], horizon: int) -> dict[str, list[Any]]:
    """The rows of cells from the prune horizon on (µs), months left out."""
    kept: dict[str, list[Any]] = {}
    for name, found in rows.items():
        if name == "rollup_busy":
            kept[name] = [row for row in found if row[0] * 10**6 >= horizon]
        else:
            kept[name] = [row for row in found if row[0] != 2 and row[1] * 10**6 >= horizon]
    return kept


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_SPAN, min_size=1, max_size=25),
    state=st.sampled_from(["kept", "none", "some rows lost", "spans removed by hand"]),
    during=st.dictionaries(st.integers(0, 30), _DURING, max_size=5),
    inside=st.booleans(),
)
@example(  # a reprice between the read of a day and its piece: a row of zeros stayed
    spans=[_call(60)], state="none", during={4: ("reprice", 0)}, inside=False
)
@example(  # a zone change while a rebuild runs: it went on cutting days at the old zone
    spans=[_call(60), _call(1500)], state="kept", during={4: ("zone", "UTC")}, inside=False
)
@example(  # a call written between the day's read of its spans and of its cells (PostgreSQL)
    spans=[_call(60)], state="kept", during={24: ("spans", [_call(70)])}, inside=True
)
def test_a_rebuild_racing_any_command_ends_as_the_spans_say(
    db_url: str,
    tmp_path: Path,
    spans: list[SpanRecord],
    state: str,
    during: dict[int, tuple[str, Any]],
    inside: bool,
) -> None:
    """Ops land between two of the rebuild's transactions, or (``inside``) between two
    statements of one of its reads: what they write must be in none of that snapshot's
    reads, its spans' or its cells'."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    with ledger.write() as conn:  # hypothesis runs the example again on the same ledger
        conn.execute(delete(SPANS))
        for key in ("zone", "pruned_before", "rollups", "rebuilding"):
            set_meta(conn, key, None)
    _without_rollups(ledger)
    ledger.dispose()
    ledger, writer = Ledger(db_url, zone="Europe/Berlin"), Ledger(db_url, zone="Europe/Berlin")
    try:
        _race(ledger, writer, tmp_path, spans, state, during, inside)
    finally:
        ledger.dispose()
        writer.dispose()


def _race(
    ledger: Ledger,
    writer: Ledger,
    tmp_path: Path,
    spans: list[SpanRecord],
    state: str,
    during: dict[int, tuple[str, Any]],
    inside: bool,
) -> None:
    ledger.record(spans)
    truth = _spans_now(ledger)
    if state == "none":
        _without_rollups(ledger)
    elif state == "some rows lost":
        with ledger.write() as conn:
            for table in TABLES:
                conn.execute(table.delete().where(table.c.start % 3 == 0))
    elif state == "spans removed by hand":
        with ledger.write() as conn:
            conn.execute(delete(SPANS).where(SPANS.c.id.in_([s.id for s in spans[::2]])))
        truth = _spans_now(ledger)
    broken = state != "kept"
    begun = 0

    def meanwhile(conn: Any, *_: Any) -> None:
        nonlocal begun, broken
        if inside:  # in a read of the rebuild's, between two of its statements
            options = conn.get_execution_options()
            if "sqlite_begin" in options or (
                conn.dialect.name == "postgresql" and "isolation_level" not in options
            ):
                return  # a write: the lock is held, another writer would only wait
        begun += 1
        what, value = during.get(begun, ("", None))
        if not what:
            return
        during.pop(begun)  # each once: the rebuilds below connect too
        try:
            if what == "spans":
                writer.record(value)
            elif what == "import":
                lines = [json.dumps(span_to_dict(s)).encode() for s in spans[value % 5 :: 2]]
                lines += [json.dumps(span_to_dict(_call(value * 30, 7, user=3))).encode()]
                import_lines(writer, lines)
            elif what == "reprice":
                reprice(writer, BOOKS[value], since=datetime(2026, 11, 1, tzinfo=UTC))
            elif what == "prune":
                prune(writer, value, now=datetime(2026, 11, 12, 12, tzinfo=UTC))
            elif what == "zone":
                rebuild(writer.write, writer.read, zone=value)
                # every day cut again from its spans, unless pruned (then none, or the
                # zone was the ledger's already: a plain rebuild, of days from the horizon)
                broken = broken and writer.pruned_before() is not None
            elif what == "rebuild":
                rebuild(writer.write, writer.read)
        except (LedgerError, ValidationError):  # refused: a prune while cut again, and so on
            pass
        truth.update(_spans_now(writer))  # a pruned span stays as it was last

    hook = "after_cursor_execute" if inside else "engine_connect"
    event.listen(ledger.engine, hook, meanwhile)
    try:
        rebuild(ledger.write, ledger.read)
    finally:
        event.remove(ledger.engine, hook, meanwhile)
    with ledger.read() as conn:
        zone, horizon = zone_name(conn), pruned_before(conn)
    # a file of its own each example: a ledger takes a zone only when new
    reference = Ledger(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", zone=zone)
    reference.record(list(truth.values()))
    got, wanted = _tables(ledger), _tables(reference)
    reference.dispose()
    if horizon is not None and broken:  # days before it keep what they had
        got, wanted = _since(got, horizon), _since(wanted, horizon)
    extra = {name: sorted(set(rows) - set(wanted[name])) for name, rows in got.items()}
    lacking = {name: sorted(set(wanted[name]) - set(rows)) for name, rows in got.items()}
    assert (extra, lacking) == ({n: [] for n in got}, {n: [] for n in got}), f"{extra} {lacking}"


_ZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Apia"]
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_SPAN, min_size=1, max_size=6),
    first=_ZONES,
    then=_ZONES,
)
@example(spans=[_call(60)], first="Europe/Berlin", then="UTC")
def test_a_zone_change_leaves_no_cell_cut_at_the_old_zone(
    sqlite_url: str, tmp_path: Path, spans: list[SpanRecord], first: str, then: str
) -> None:
    """``db rollup --zone`` from Berlin to UTC left Berlin's day and month cells that began
    before the first UTC day with a call (23:00 UTC the evening before): the UTC month
    summed that day twice, and the stale month cell stayed in October."""
    ledger = Ledger(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", zone=first)
    ledger.record(spans)
    assert rebuild(ledger.write, ledger.read, zone=then) == len(spans)
    reference = Ledger(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", zone=then)
    reference.record(spans)
    assert _tables(ledger) == _tables(reference)
    for each in (ledger, reference):
        each.dispose()


_EDGES = (
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # Berlin springs forward
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # Berlin falls back
    datetime(2026, 10, 31, 23, tzinfo=UTC),  # Berlin's November begins
    datetime(2026, 11, 1, 4, tzinfo=UTC),  # New York's November begins
    datetime(2026, 11, 1, 6, tzinfo=UTC),  # New York falls back
    datetime(2026, 12, 31, 23, tzinfo=UTC),  # Berlin's new year
)


def _at_edge(edge: int, offset_s: int, busy_s: int, user: int, huge: bool) -> SpanRecord:
    span = _call(0, busy_s=busy_s, user=user)
    at = _EDGES[edge] + timedelta(seconds=offset_s)
    span = replace(
        span,
        id=new_span_row_id(int(at.timestamp() * 10**9)),
        started_at=at,
        ended_at=at + timedelta(seconds=busy_s + 1),
    )
    if huge:  # the most one call can cost and take: a few of them near a 64-bit sum
        span = replace(
            span,
            cost_total=MAX_CALL_COST,
            cost_tokens=MAX_CALL_COST,
            input_tokens=MAX_TOKENS,
            latency_ns=MAX_DURATION_NS,
            load_duration_ns=MAX_DURATION_NS,
        )
    return span


_EDGE_SPAN = st.builds(
    _at_edge,
    edge=st.integers(0, len(_EDGES) - 1),
    offset_s=st.integers(-130, 130),
    busy_s=st.sampled_from([1, 50, 130]),
    user=st.integers(0, 3),
    huge=st.booleans(),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spans=st.lists(_EDGE_SPAN, min_size=1, max_size=12),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York"]),
    state=st.sampled_from(["none", "some rows lost", "spans removed by hand"]),
    during=st.dictionaries(st.integers(0, 40), st.lists(_EDGE_SPAN, min_size=1, max_size=3)),
)
def test_calls_at_midnights_month_ends_and_clock_changes_are_rebuilt_exactly(
    db_url: str,
    tmp_path: Path,
    spans: list[SpanRecord],
    zone: str,
    state: str,
    during: dict[int, list[SpanRecord]],
) -> None:
    """Calls busy across a local midnight, a month's end, a day of 23 or 25 hours, at the
    largest costs and durations, with calls written between any two of the rebuild's
    transactions: every cell as a ledger fed the same spans has it; a day left with no
    span keeps no row."""
    ledger = Ledger(db_url)
    with ledger.write() as conn:
        conn.execute(delete(SPANS))
        for key in ("zone", "pruned_before", "rollups", "rebuilding"):
            set_meta(conn, key, None)
    _without_rollups(ledger)
    ledger.dispose()
    ledger, writer = Ledger(db_url, zone=zone), Ledger(db_url, zone=zone)
    try:
        ledger.record(spans)
        if state == "none":
            _without_rollups(ledger)
        elif state == "some rows lost":
            with ledger.write() as conn:
                for table in TABLES:
                    conn.execute(table.delete().where(table.c.start % 2 == 0))
        else:  # their days keep rows, with no span left to build them from
            with ledger.write() as conn:
                conn.execute(delete(SPANS).where(SPANS.c.id.in_([s.id for s in spans[::2]])))
        begun = 0

        def meanwhile(_conn: Any) -> None:
            nonlocal begun
            begun += 1
            if begun in during:
                writer.record(during.pop(begun))

        event.listen(ledger.engine, "engine_connect", meanwhile)
        try:
            rebuild(ledger.write, ledger.read)
        finally:
            event.remove(ledger.engine, "engine_connect", meanwhile)
        reference = Ledger(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", zone=zone)
        reference.record(list(_spans_now(ledger).values()))
        wanted = _tables(reference)
        reference.dispose()
        assert _tables(ledger) == wanted
    finally:
        ledger.dispose()
        writer.dispose()


def test_a_call_written_while_a_stale_cell_at_the_cap_is_corrected_keeps_its_cost(
    db_url: str, tmp_path: Path
) -> None:
    """A cell's sum stops at 2**63 - 1 (1,001 calls at the most one call can cost). Ten of
    1,002 such calls removed by hand leave it stale at the cap; a call written between the
    read of its day and the piece correcting it added nothing (the cap), and the difference
    taken from the read then took the cell to 992 calls' cost: the new call's was lost."""
    calls = [
        replace(_call(60, n % 60), cost_total=MAX_CALL_COST, cost_tokens=MAX_CALL_COST)
        for n in range(1002)
    ]
    late = replace(calls[-1], id=new_span_row_id(int(calls[-1].started_at.timestamp() * 1e9)))
    for at in range(3, 9):  # each of the rebuild's first transactions
        ledger = Ledger(db_url, zone="Europe/Berlin")
        writer = Ledger(db_url, zone="Europe/Berlin")
        with ledger.write() as conn:
            conn.execute(delete(SPANS))
        _without_rollups(ledger)
        ledger.record(calls)
        with ledger.write() as conn:
            conn.execute(delete(SPANS).where(SPANS.c.id.in_([s.id for s in calls[:10]])))
        begun = [at]

        def meanwhile(_conn: Any, begun: list[int] = begun, writer: Ledger = writer) -> None:
            begun[0] -= 1
            if begun[0] == 0:
                writer.record([late])

        event.listen(ledger.engine, "engine_connect", meanwhile)
        rebuild(ledger.write, ledger.read)
        event.remove(ledger.engine, "engine_connect", meanwhile)
        reference = Ledger(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", zone="Europe/Berlin")
        reference.record([*calls[10:], late])
        assert (at, _tables(ledger)) == (at, _tables(reference))
        for each in (ledger, writer, reference):
            each.dispose()


def test_a_month_whose_days_sum_past_64_bits_is_rebuilt(db_url: str) -> None:
    """A month's cells are the sums of its days': on SQLite, ``sum()`` of days that together
    pass 2**63 (10,000 calls with the longest load time a span may say) failed the whole
    ``db rollup`` with "integer overflow". The month stops at the cap, as a write's sum does."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(
        [
            replace(_call(day * 1440 + n % 600, n % 60), load_duration_ns=MAX_DURATION_NS)
            for day in (0, 1)
            for n in range(5000)
        ]
    )
    kept = _tables(ledger)
    assert max(row[13] for row in kept["rollups"] if row[0] == 2) == 2**63 - 1  # the cap
    _without_rollups(ledger)
    assert rebuild(ledger.write, ledger.read) == 10_000
    assert _tables(ledger) == kept
    ledger.dispose()
