"""Finding the row behind a sum that is no whole number, to name it.

A sum over integer columns is an integer on every backend, unless a row holds what is not
one: SQLite keeps a REAL, a text or a blob in an integer column (another tool wrote it, or
someone edited it in SQL), and its SUM is then a REAL, with a text counted as 0. Cut to a
whole number, a report was a fraction short or a cost of ``'n/a'`` summed as nothing. Such
a sum is refused instead, and this finds the span or rollup row that made it, for a
LedgerError that says which row, which column, what it holds and what to do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    SmallInteger,
    Table,
    func,
    or_,
    select,
)

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._span_rows import row_to_span
from ollama_meter.ledger._spans import select_spans
from ollama_meter.ledger.models import (
    ROLLUP_BUSY,
    ROLLUP_BUSY_CELLS,
    ROLLUP_HISTOGRAMS,
    ROLLUPS,
    SPANS,
)


class NotWhole(Exception):
    """A sum that is no whole number: a row holds what its integer column should not."""


def whole(value: Any) -> int:
    """A sum as the integer it is (PostgreSQL sums big integers as numeric), else NotWhole."""
    if type(value) is int:
        return value
    if value is None:
        return 0
    if type(value) is Decimal and value.is_finite() and value == value.to_integral_value():
        return int(value)
    raise NotWhole(value)


P = ParamSpec("P")
R = TypeVar("R")


def named_sums(
    read: Callable[Concatenate[Connection, P], R],
) -> Callable[Concatenate[Connection, P], R]:
    """``read`` (whose sums go through :func:`whole`), a sum of no whole number a
    LedgerError naming the row behind it."""

    def reading(conn: Connection, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return read(conn, *args, **kwargs)
        except NotWhole as exc:
            raise unreadable(conn, exc.args[0]) from None

    return functools.update_wrapper(reading, read)  # type: ignore[return-value]


_INTEGER_TYPES = (Integer, BigInteger, SmallInteger)
_SPAN_INTEGERS = [c for c in SPANS.c if isinstance(c.type, _INTEGER_TYPES)]
_SUMMED_TABLES = (ROLLUPS, ROLLUP_HISTOGRAMS, ROLLUP_BUSY, ROLLUP_BUSY_CELLS)


def _measures(table: Table) -> list[Column[Any]]:
    key = {c.name for c in table.primary_key.columns}
    return [c for c in table.c if c.name not in key and isinstance(c.type, _INTEGER_TYPES)]


def unreadable(conn: Connection, summed: object) -> LedgerError:
    """The error naming the first row whose integer column holds no integer."""
    if conn.dialect.name == "sqlite":
        odd = or_(*(func.typeof(c).not_in(("integer", "null")) for c in _SPAN_INTEGERS))
        for row in conn.execute(select_spans(content=False).where(odd).limit(1)):
            row_to_span(row)  # raises, naming the span
        for table in _SUMMED_TABLES:
            measures = _measures(table)
            odd = or_(*(func.typeof(c) != "integer" for c in measures))
            found = conn.execute(select(table).where(odd).limit(1)).first()
            if found is not None:
                return _rollup_error(table, measures, found._mapping)
    return LedgerError(
        f"a sum over the ledger is {summed!r}, not a whole number: a span or rollup row holds "
        "what its column should not; fix it in SQL, then run `ometer db rollup`"
    )


def _rollup_error(table: Table, measures: list[Column[Any]], row: Any) -> LedgerError:
    column = next(c.name for c in measures if type(row[c.name]) is not int)
    value = repr(row[column])
    shown = value if len(value) <= 80 else value[:77] + "..."
    where = " AND ".join(f'"{c.name}" = {row[c.name]!r}' for c in table.primary_key.columns)
    return LedgerError(
        f"a {table.name} row in the ledger cannot be read: its {column} is {shown}, not a "
        "whole number; rebuild the rollups from the raw spans with `ometer db rollup` (a day "
        "before the prune horizon has no raw spans left: fix its row in SQL, `UPDATE "
        f"{table.name} SET {column} = ... WHERE {where}`)"
    )
