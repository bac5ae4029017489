"""Sums over rollup cells, each cell added or subtracted, and grouped sums exact past 64 bits.

Statements here take what changes from one read to the next (the cells with their buckets
and signs, the filters' values) as bind parameters, so a read of one shape can be built once
and run again: building a spend read (its expressions, its cache key) took 3.7 ms of CPU, the
database 0.1 ms of it (a budget renewal on a 20,000-span ledger). Planning which cells to read
is :mod:`._plan`'s job; this module only reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    Select,
    SmallInteger,
    and_,
    case,
    column,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.util import ClauseAdapter

from ollama_meter.ledger._plan import Piece, cell_signs

CELLS = "cells"
"""The bind parameter that holds a read's cells (:func:`cells_param`)."""


@cache
def cells_table(dialect: str, name: str = CELLS) -> Any:
    """The cells of a read as a table (grain, start, bucket, sign), from one bind parameter
    (``name``, a JSON array of rows, :func:`cells_param`), on SQLite and PostgreSQL.

    One parameter, not the cells written out as literals: the SQL of a read is then the same
    whatever its window, built and compiled once, where each window's literals made a
    statement of its own to build, compile and keep in the compiled cache. Nor a parameter per
    value: thousands of them cost more to compile than the query takes to run.
    """
    if dialect == "postgresql":
        rows = (
            "SELECT CAST(e->>0 AS smallint) AS grain, CAST(e->>1 AS bigint) AS start, "
            "CAST(e->>2 AS integer) AS bucket, CAST(e->>3 AS integer) AS sign "
            f"FROM json_array_elements(CAST(:{name} AS json)) AS listed(e)"
        )
    else:
        rows = (
            "SELECT json_extract(value, '$[0]') AS grain, json_extract(value, '$[1]') AS start, "
            "json_extract(value, '$[2]') AS bucket, json_extract(value, '$[3]') AS sign "
            f"FROM json_each(:{name}) AS listed"
        )
    return (
        text(rows)
        .columns(
            column("grain", SmallInteger),
            column("start", BigInteger),
            column("bucket", Integer),
            column("sign", Integer),
        )
        .subquery("cells")
    )


def cells_param(entries: Sequence[tuple[int, int, int, int]]) -> str:
    """``entries`` (grain, start s, bucket, sign) as :func:`cells_table` reads them: integers
    only (``:d`` takes nothing else)."""
    return "[" + ",".join(f"[{g:d},{s:d},{b:d},{n:d}]" for g, s, b, n in entries) + "]"


CELLS_PER_READ = 2000
"""Cells per statement: a window of many years by day takes several."""


def stored(dialect: str, column: Any) -> Any:
    """``column`` as a sum must see it. SQLite multiplies a text or blob in an integer column
    as 0, so a sum over ``'n/a'`` was an integer short of it: there it is a REAL, the sum
    one the reader refuses, naming the row (``_unreadable``). An integer, negative too,
    stays as it is."""
    if dialect != "sqlite":
        return column
    return case((func.typeof(column) == "integer", column), else_=literal(0.5))


@dataclass(frozen=True, slots=True)
class Summing:
    """A grouped sum's statements: the GROUP BY, and the rows it sums (summed here when the
    database's sum overflows, see :func:`grouped_sums`). Built once, run with parameters."""

    grouped: Select[Any]
    detail: Select[Any]
    width: int
    values: int


def summing(
    keys: Sequence[Any],
    values: Sequence[Any],
    *,
    source: Any = None,
    filters: Sequence[Any] = (),
    group_by: Sequence[Any] | None = None,
) -> Summing:
    """The statements of :func:`grouped_sums`, to run with :func:`run_summing`."""
    detail = select(*keys, *values).where(*filters)
    grouped = select(*keys, *(func.sum(v) for v in values)).where(*filters)
    if source is not None:
        detail, grouped = detail.select_from(source), grouped.select_from(source)
    return Summing(grouped.group_by(*(group_by or keys)), detail, len(keys), len(values))


def run_summing(
    conn: Connection, statements: Summing, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Rows of (*keys, *sums), exact at any size.

    SQLite's ``sum()`` fails with "integer overflow" past 2**63, where PostgreSQL's goes on
    in numeric: a tenant of two departments whose rollup cells each hold 2**62 (an import of
    the costliest calls) could not be reported. There the rows are summed here instead.
    """
    try:
        return [tuple(row) for row in conn.execute(statements.grouped, params)]
    except OperationalError as exc:
        if "integer overflow" not in str(exc):
            raise
    width = statements.width
    found: dict[tuple[Any, ...], list[int | None]] = {}
    for row in conn.execute(statements.detail, params):
        sums = found.setdefault(tuple(row[:width]), [None] * statements.values)
        for at, value in enumerate(row[width:]):
            if value is not None:  # as sum() has it: NULLs add nothing, all NULL is NULL
                sums[at] = value if sums[at] is None else sums[at] + value
    return [(*key, *sums) for key, sums in found.items()]


def grouped_sums(
    conn: Connection,
    keys: Sequence[Any],
    values: Sequence[Any],
    *,
    source: Any = None,
    filters: Sequence[Any] = (),
    group_by: Sequence[Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Rows of (*keys, *sums of values) grouped by ``keys`` (or ``group_by``), exact at any size
    (see :func:`run_summing`)."""
    statements = summing(keys, values, source=source, filters=filters, group_by=group_by)
    return run_summing(conn, statements)


def cell_sums(
    dialect: str,
    table: Any,
    groups: Sequence[Any],
    sums: Sequence[Any],
    filters: Sequence[Any],
    unsigned: Sequence[Any] = (),
) -> Summing:
    """The statements of :func:`signed_sums`, to run with :func:`signed_rows`: ``filters`` may
    hold bind parameters (their values given to it), the cells are one (:data:`CELLS`)."""
    cells = cells_table(dialect)
    joined, read = in_cells(dialect, cells, table, filters)
    signed = (
        cells.c.sign * (stored(dialect, read(table.c[v])) if isinstance(v, str) else read(v))
        for v in sums
    )
    return summing(
        [cells.c.bucket, *map(read, groups)], [*signed, *map(read, unsigned)], source=joined
    )


def in_cells(
    dialect: str, cells: Any, table: Any, filters: Sequence[Any]
) -> tuple[Any, Callable[[Any], Any]]:
    """``table``'s rows of the ``cells`` (:func:`cells_table`) that ``filters`` pick, each
    beside its cell, and what reads an expression over ``table``'s columns from them.

    On PostgreSQL each cell's rows are a lookup by the key (grain, start) the cells lead to:
    the planner, sizing rollups no ANALYZE had seen yet at a row or so for a tenant (a ledger
    just imported, autovacuum not yet round), scanned them once and read the cells' JSON
    again for each of their rows (2,264 times for one report; 477 ms on 4,500 spans, past
    ``OMETER_LEDGER_WAIT`` on more). A LATERAL subquery that is not merged into the join
    (``OFFSET 0``) can only be read per cell. SQLite's planner sizes ``json_each`` itself.
    """
    on = and_(table.c.grain == cells.c.grain, table.c.start == cells.c.start)
    if dialect != "postgresql":
        return cells.join(table, and_(on, *filters)), lambda expression: expression
    rows = select(table).where(on, *filters).offset(0).lateral(f"{table.name}_of_cells")
    adapter = ClauseAdapter(rows)

    def read(expression: Any) -> Any:  # a column by its name: a tenth of adapting it
        if isinstance(expression, Column) and expression.table is table:
            return rows.c[expression.key]
        return adapter.traverse(expression)

    return cells.join(rows, true()), read


def signed_rows(
    conn: Connection,
    statements: Summing,
    pieces: Iterable[Piece],
    zone: tzinfo | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Rows of :func:`cell_sums`' statements over the pieces' cells, with ``params``."""
    entries = cell_signs(pieces, zone)
    for first in range(0, len(entries), CELLS_PER_READ):
        cells = cells_param(entries[first : first + CELLS_PER_READ])
        yield from run_summing(conn, statements, {**(params or {}), CELLS: cells})


def signed_sums(
    conn: Connection,
    table: Any,
    pieces: Iterable[Piece],
    groups: Sequence[Any],
    sums: Sequence[Any],
    filters: Sequence[Any],
    zone: tzinfo | None = None,
    unsigned: Sequence[Any] = (),
) -> Iterator[Any]:
    """Rows of (bucket, *groups, *sums, *unsigned), the sums folded over the pieces' cells,
    with signs; ``unsigned`` expressions summed without (a count of cells, never cancelled
    by a cell subtracted).

    ``sums`` are column names or expressions over ``table``'s columns.

    The cells, their buckets and signs go to the database as a table (:func:`cells_table`)
    joined on the rollups' key (grain, start): each cell is an index lookup, and the
    database adds and subtracts, so only the answer's rows come back. One
    statement is one snapshot (also on PostgreSQL under READ COMMITTED): a month
    cell and the quarter hours subtracted from it cannot disagree about a span
    committed in between. Only a window of many years by day takes several.
    """
    statements = cell_sums(conn.dialect.name, table, groups, sums, filters, unsigned)
    return signed_rows(conn, statements, pieces, zone)
