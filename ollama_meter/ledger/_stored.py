"""Reading rows back into records, for rows someone may have edited by hand in SQL.

A record checks its values when made, so a budget row set to ``limit_micros = -5``, a
period ``'fortnight'`` or a tenant with a line break, or a price rule whose price is
``'abc'``, raised a ValueError (or a decimal or date parser's own) from every read of
the table: a traceback for the CLI and every call of the Python API, and a gateway that
logged one every few seconds. Each is a :class:`LedgerError` naming the row and what to
do, so a server keeps what it read before (see :mod:`ollama_meter._reloaded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, Table, Text, cast, select

from ollama_meter.errors import LedgerError, UnreadableRow

R = TypeVar("R")
UNREADABLE = (ValueError, TypeError, ArithmeticError)
"""What a record, or a column's own type, raises for a value it cannot take."""


def read_records(
    conn: Connection,
    table: Table,
    query: Select[Any],
    convert: Callable[[Any], R],
    *,
    what: Callable[[Any], str],
    fix: Callable[[Any], str],
    parameters: dict[str, Any] | None = None,
) -> list[R]:
    """``convert`` of each row ``query`` reads from ``table``; LedgerError for one it cannot
    take, naming it (``what``, from its primary key columns) and what to do (``fix``).
    ``parameters``: the values of ``query``'s bound parameters (a statement made once)."""
    try:
        rows = conn.execute(query, parameters).all()
    except UNREADABLE:  # a column's own type could not read a value: find which
        _unreadable(conn, table, query.params(parameters) if parameters else query, what, fix)
        raise
    records = []
    for row in rows:
        try:
            records.append(convert(row))
        except UNREADABLE as exc:
            raise _error(what(row), _reason(exc), fix(row)) from None
    return records


def readable_records(
    conn: Connection,
    table: Table,
    query: Select[Any],
    convert: Callable[[Any], R],
    *,
    what: Callable[[Any], str],
    fix: Callable[[Any], str],
) -> tuple[list[R], list[tuple[Any, str]]]:
    """What :func:`read_records` reads, but a row it cannot take is no error: each such row's
    primary key with the LedgerError's words, for a caller that shows the others (one row
    edited by hand spoils no other)."""
    try:
        return read_records(conn, table, query, convert, what=what, fix=fix), []
    except LedgerError:
        pass  # one row or more cannot be read: each one on its own
    keys = list(table.primary_key.columns)
    records: list[R] = []
    broken: list[tuple[Any, str]] = []
    for key in conn.execute(query.with_only_columns(*keys)).all():
        here = [column == value for column, value in zip(keys, key, strict=True)]
        try:
            records += read_records(conn, table, query.where(*here), convert, what=what, fix=fix)
        except LedgerError as exc:
            broken.append((key, str(exc)))
    return records, broken


def _unreadable(
    conn: Connection,
    table: Table,
    query: Select[Any],
    what: Callable[[Any], str],
    fix: Callable[[Any], str],
) -> None:
    """Raise for the first row, and column, whose stored value its column's type cannot read."""
    keys = list(table.primary_key.columns)
    for key in conn.execute(select(*keys).order_by(*keys)).all():
        here = [column == value for column, value in zip(keys, key, strict=True)]
        try:
            conn.execute(query.where(*here)).all()
        except UNREADABLE:
            for column in table.columns:
                try:
                    conn.execute(select(column).where(*here)).all()
                except UNREADABLE:
                    raw = conn.execute(select(cast(column, Text)).where(*here)).scalar()
                    reason = f"its {column.name} {raw!r} is not a value of the column's type"
                    raise _error(what(key), reason, fix(key)) from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _error(what: str, reason: str, fix: str) -> UnreadableRow:
    return UnreadableRow(f"{what} in the ledger cannot be read: {reason}; {fix}")
