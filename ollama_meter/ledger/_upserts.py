"""The rollups' upserts, compiled once per dialect and driver, and run by position.

A rollup write adds to what is stored (``x = min(x + excluded.x, MOST)``): several
processes may write at once, and a sum stops at the largest 64-bit integer rather than
fail. Statements are compiled to the driver's own SQL once and given rows as tuples.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Numeric,
    Table,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from ollama_meter.ledger._cells import BIN_COLUMNS, DIMENSIONS, HISTOGRAM_KEY, MEASURES
from ollama_meter.ledger._types import driver_key
from ollama_meter.ledger.models import (
    ROLLUP_BUSY,
    ROLLUP_BUSY_CELLS,
    ROLLUP_HISTOGRAMS,
    ROLLUPS,
)

HISTOGRAMS: Table = ROLLUP_HISTOGRAMS
BUSY: Table = ROLLUP_BUSY
BUSY_CELLS: Table = ROLLUP_BUSY_CELLS
MOST = 2**63 - 1
"""The most a rollup sum holds (a 64-bit integer column): a sum past it stays at it."""
RETURNS = (
    f" RETURNING {BUSY.name}.start, {BUSY.name}.host, {BUSY.name}.intervals, {BUSY.name}.busy_us"
)
"""What :attr:`Statements.busy_claim` returns of each minute's row: its key, as stored."""
BUSY_READS = (2, 16, 250)
"""Minutes of busy time read per query: a call touches one or two, an import hundreds
(the largest stays well under SQLite's limit on parameters)."""


# -- statements compiled once per dialect ------------------------------------------------


def run(conn: Connection, sql: str, params: Any) -> list[Any]:
    """Driver SQL ``sql`` with ``params`` (a row's tuple; a list of them runs it per row), in the
    caller's transaction: the rows it returns.

    On SQLite straight on the driver's connection: a call's write is a dozen statements, and
    SQLAlchemy's work around each (its result object, its events) took a quarter of the
    write's time. Errors are SQLAlchemy's still (``DBAPIError``), as every caller expects.
    """
    if conn.dialect.name != "sqlite":
        result = conn.exec_driver_sql(sql, params)
        return list(result) if result.returns_rows else []
    error = conn.dialect.loaded_dbapi.Error
    many = isinstance(params, list)
    driver: Any = conn.connection.driver_connection
    try:
        return list((driver.executemany if many else driver.execute)(sql, params))
    except error as exc:
        raise DBAPIError.instance(
            sql, params, exc, error, dialect=conn.dialect, ismulti=many
        ) from exc


def positional(statement: Any, dialect: Dialect, names: Sequence[str]) -> str:
    """``statement`` as driver SQL taking its parameters by position, in the order of ``names``."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    text = compiled.string
    if compiled.positional:
        assert tuple(compiled.positiontup) == tuple(names), "parameters out of order"
        return str(text)
    # pyformat (psycopg): %(name)s → %s, in the order given
    order = []
    for name in names:
        marker = f"%({name})s"
        assert text.count(marker) == 1
        order.append((text.index(marker), name))
    assert [n for _, n in sorted(order)] == list(names), "parameters out of order"
    for name in names:
        text = text.replace(f"%({name})s", "%s")
    return str(text)


class DriverSQL:
    """A statement as its driver takes it: ``sql`` runs a row's tuple (a list of them, once
    per row); ``rows``, where set (PostgreSQL), runs a whole list at once (:func:`run_rows`)."""

    __slots__ = ("rows", "sql", "text")

    def __init__(self, sql: str, rows: str | None = None, text: Sequence[bool] = ()) -> None:
        self.sql = sql
        self.rows = rows
        self.text = tuple(text)
        """Per parameter, whether it is text (else an integer)."""


def run_rows(conn: Connection, statement: DriverSQL, rows: list[tuple[Any, ...]]) -> list[Any]:
    """``statement`` for each of ``rows``, in the caller's transaction: the rows it returns.

    On PostgreSQL in one statement, each parameter an array of the rows' values (``unnest``),
    rows taken in the order given: a row a statement cost a round of parse, plan and
    execution in the server, most of an import's time (200,000 upserts for 20,000 spans)."""
    if not rows:
        return []
    if statement.rows is None:
        if statement.sql.endswith(RETURNS):  # a driver's executemany returns nothing
            return [found for row in rows for found in run(conn, statement.sql, row)]
        return run(conn, statement.sql, rows)
    return run_arrays(conn, statement, arrays(rows, statement.text))


def arrays(rows: list[tuple[Any, ...]], text: Sequence[bool]) -> list[str]:
    """The arrays of ``rows``' columns (:func:`array`; ``text``: which columns are text)."""
    return list(map(array, zip(*rows, strict=True), text))


def run_arrays(conn: Connection, statement: DriverSQL, arrays: list[str]) -> list[Any]:
    """``statement.rows`` given its parameters' arrays (:func:`array`), one a column: the
    rows it returns."""
    assert statement.rows is not None, "a statement of one row at a time"
    assert len(arrays) == len(statement.text), "an array a parameter"
    result = conn.exec_driver_sql(statement.rows, tuple(arrays))
    return list(result) if result.returns_rows else []


def array(values: Sequence[Any], text: bool) -> str:
    """PostgreSQL's literal of the array of ``values`` (text, else integers; None is NULL).

    Made here rather than by the driver, which dumps a list item by item in Python (three
    times the time)."""
    if not text:
        if None in values:
            return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"
        return "{" + ",".join(map(str, map(int, values))) + "}"
    quoted = {value: _quoted(value) for value in set(values)}  # a few names, many times
    return "{" + ",".join(map(quoted.__getitem__, values)) + "}"


def _quoted(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unnest(table: Table, names: Sequence[str]) -> tuple[str, list[bool]]:
    """``FROM unnest(...)`` of an array parameter per column of ``names``, its rows named
    ``u.p0``..., in the arrays' order as ``u.n``; and, per parameter, whether it is text."""
    text = [table.c[name].type.python_type is str for name in names]
    arrays = ", ".join("%s::text[]" if is_text else "%s::bigint[]" for is_text in text)
    columns = ", ".join(f"p{at}" for at in range(len(names)))
    return f"FROM unnest({arrays}) WITH ORDINALITY AS u({columns}, n)", text


def upsert(
    dialect: Dialect,
    table: Table,
    keys: Sequence[str],
    added: Sequence[str],
    *,
    initial: Sequence[str] = (),
    zeros: Sequence[str] = (),
    replaced: Sequence[str] = (),
) -> DriverSQL:
    """Insert a row, or add ``added`` to the one there; ``initial`` is only inserted,
    ``zeros`` are inserted as 0 (no parameter), ``replaced`` replace the stored values."""
    names = [*keys, *initial, *replaced, *added]
    # Imported by name when first compiled: a SQLite ledger never loads PostgreSQL's dialect.
    which = "postgresql" if dialect.name == "postgresql" else "sqlite"
    module: Any = importlib.import_module(f"sqlalchemy.dialects.{which}")
    values: dict[str, Any] = {name: bindparam(name) for name in names}
    values.update({name: literal_column("0") for name in zeros})
    statement = module.insert(table).values(values)
    most: Any = literal_column(str(MOST))
    # Only where something is added: most of a histogram row's 75 bins add 0 (on SQLite a
    # row of them took a tenth less time so).
    if which == "postgresql":  # in numeric, where the sum cannot overflow before LEAST
        set_: dict[str, Any] = {
            n: case(
                (statement.excluded[n] == literal_column("0"), table.c[n]),
                else_=func.least(cast(table.c[n], Numeric) + statement.excluded[n], most),
            )
            for n in added
        }
    else:  # SQLite turns an overflowing sum into a float, which MIN brings back
        set_ = {n: func.min(table.c[n] + statement.excluded[n], most) for n in added}
        if len(added) > 1:  # (a row of one bin counts it: no 0 to skip)
            set_ = {
                n: case((statement.excluded[n] == literal_column("0"), table.c[n]), else_=sum_)
                for n, sum_ in set_.items()
            }
    set_.update({n: statement.excluded[n] for n in replaced})
    statement = statement.on_conflict_do_update(index_elements=list(keys), set_=set_)
    sql = positional(statement, dialect, names)
    if which != "postgresql" or zeros or dialect.paramstyle not in ("format", "pyformat"):
        return DriverSQL(sql)
    # The same upsert of many rows at once: VALUES (...) made a SELECT from the arrays,
    # in their order (concurrent writers lock rows in key order).
    head, rest = sql.split(" VALUES (", 1)
    conflict = rest[rest.index(") ON CONFLICT ") + 1 :]
    source, text = _unnest(table, names)
    picked = ", ".join(f"u.p{at}" for at in range(len(names)))
    return DriverSQL(sql, f"{head} SELECT {picked} {source} ORDER BY u.n{conflict}", text)


HISTOGRAM_ROW_KEY = ["grain", "start", *HISTOGRAM_KEY, "metric", "decade"]


class Statements:
    def __init__(self, dialect: Dialect) -> None:
        self.cube = upsert(dialect, ROLLUPS, ["grain", "start", *DIMENSIONS], MEASURES)
        self.histogram = upsert(dialect, HISTOGRAMS, HISTOGRAM_ROW_KEY, BIN_COLUMNS)
        # per bin, the upsert of rows with that bin alone counted (SQLite), compiled when used
        self.histogram_bin: dict[int, DriverSQL] | None = {}
        if dialect.name == "postgresql":
            self.histogram_bin = None
        # PostgreSQL's writers run at once: each minute's row made sure of, its calls counted,
        # and it locked, in key order, its stored intervals returned, in one statement (a
        # SELECT ... FOR UPDATE of the minutes after it locked every server's row of them,
        # and two writers of one minute on two servers deadlocked).
        presence = upsert(
            dialect, BUSY, ["start", "host"], ["calls"], initial=["intervals", "busy_us"]
        )
        self.busy_claim = DriverSQL(
            presence.sql + RETURNS,
            None if presence.rows is None else presence.rows + RETURNS,
            presence.text,
        )
        # SQLite's writers take turns: a minute's row is read, then written whole at once
        self.busy_whole = upsert(
            dialect, BUSY, ["start", "host"], ["calls"], replaced=["intervals", "busy_us"]
        )
        self.busy_cells = upsert(
            dialect, BUSY_CELLS, ["grain", "start", "host"], ["busy_us", "calls"]
        )
        changed = (
            update(BUSY)
            .where(BUSY.c.start == bindparam("b_start"), BUSY.c.host == bindparam("b_host"))
            .values(intervals=bindparam("b_intervals"), busy_us=bindparam("b_busy"))
        )
        self.busy_update_cells: DriverSQL | None = None
        self.busy_update = DriverSQL(
            positional(changed, dialect, ["b_intervals", "b_busy", "b_start", "b_host"])
        )
        if self.busy_cells.rows is not None:  # PostgreSQL: all the minutes' rows in one statement
            source, text = _unnest(BUSY, ["intervals", "busy_us", "start", "host"])
            self.busy_update.rows = (
                f"UPDATE {BUSY.name} SET intervals = u.p0, busy_us = u.p1 {source} "
                f"WHERE {BUSY.name}.start = u.p2 AND {BUSY.name}.host = u.p3"
            )
            self.busy_update.text = tuple(text)
            # and the cells in the same statement: only the cells' insert takes locks (in
            # key order), the minutes' rows being locked already (busy_claim)
            self.busy_update_cells = DriverSQL(
                "",
                f"WITH changed AS ({self.busy_update.rows}) {self.busy_cells.rows}",
                self.busy_update.text + self.busy_cells.text,
            )
        self.busy_select = {size: busy_select(dialect, size) for size in BUSY_READS}

    def one_bin(self, dialect: Dialect, index: int) -> DriverSQL:
        """The upsert adding to bin ``index`` alone (the other bins of a new row are 0).

        Compiled once, for the first bin; the others' are its text with the parameter and the
        column moved (75 compilations took 0.15 s of every process that wrote, and 2 ms of
        the call that first counted a bin)."""
        bins = self.histogram_bin
        assert bins is not None
        statement = bins.get(index)
        if statement is None:
            first = bins.get(0)
            if first is None:
                others = BIN_COLUMNS[1:]
                first = bins[0] = upsert(
                    dialect, HISTOGRAMS, HISTOGRAM_ROW_KEY, BIN_COLUMNS[:1], zeros=others
                )
            statement = bins[index] = DriverSQL(_moved_bin(first.sql, index))
        return statement


def _moved_bin(sql: str, index: int) -> str:
    """The one-bin upsert ``sql`` of the first bin made the one of bin ``index``."""
    head, values = sql.split(" VALUES (", 1)
    values, update = values.split(") ON CONFLICT ", 1)
    marks = values.split(", ")
    key, bins = marks[: -len(BIN_COLUMNS)], marks[-len(BIN_COLUMNS) :]
    assert bins == ["?", *["0"] * (len(BIN_COLUMNS) - 1)], "not the first bin's upsert"
    bins[0], bins[index] = bins[index], bins[0]
    target, _, change = update.partition(" DO UPDATE SET ")
    assert change.count(BIN_COLUMNS[0]) == 3, "not the first bin's update"
    change = change.replace(BIN_COLUMNS[0], BIN_COLUMNS[index])
    return f"{head} VALUES ({', '.join([*key, *bins])}) ON CONFLICT {target} DO UPDATE SET {change}"


def busy_select(dialect: Dialect, size: int) -> DriverSQL:
    """Stored busy rows of ``size`` minutes, in key order (SQLite: writers take turns)."""
    names = [f"b_{i}" for i in range(size)]
    stored = (
        select(BUSY.c.start, BUSY.c.host, BUSY.c.intervals, BUSY.c.busy_us)
        .where(BUSY.c.start.in_([bindparam(name) for name in names]))
        .order_by(BUSY.c.start, BUSY.c.host)
    )
    return DriverSQL(positional(stored, dialect, names))


_STATEMENTS: dict[tuple[str, str, str], Statements] = {}


def statements_for(dialect: Dialect) -> Statements:
    """The statements compiled for ``dialect``'s SQL, driver and parameter style, once."""
    key = driver_key(dialect)
    statements = _STATEMENTS.get(key)
    if statements is None:
        statements = _STATEMENTS[key] = Statements(dialect)
    return statements
