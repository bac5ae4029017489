"""Span rows read back into spans, for rows another tool wrote or someone edited in SQL.

SQLite's type affinity keeps what it cannot convert: an integer column may hold ``1500.5``,
``'n/a'`` or a blob, a time column text; any backend holds negative tokens, a lowercase
currency or an unknown status. Such a span made ``ometer log`` exit 70 (a bug in ometer)
and sums truncated it. Every reader turns rows into spans here, so each one gives the span
exactly (a value SQLite stores as an integer, like ``1500.0`` or ``'250'``, is that integer
already) or a :class:`LedgerError` naming the span, the column, its value, and the UPDATE
that fixes it: a data problem, never a bug, never a silently wrong sum.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ColumnElement, Dialect, Integer, Text, type_coerce
from sqlalchemy.types import TypeDecorator, TypeEngine

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._types import UTCMicros
from ollama_meter.records import (
    MAX_CALL_COST,
    MAX_DURATION_NS,
    MAX_TOKENS,
    ROW_FIELDS,
    TEXT_LIMITS,
    DurationSource,
    SpanRecord,
    Status,
    TokenSource,
)

_FIELDS = ROW_FIELDS
_AT = {name: index for index, name in enumerate(_FIELDS)}
_CURRENCY = re.compile(r"[A-Z]{3}")

_COUNTS = {"input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS}
_DURATIONS = dict.fromkeys(
    (
        *("total_duration_ns", "load_duration_ns", "prompt_eval_duration_ns"),
        *("eval_duration_ns", "latency_ns", "ttft_ns", "queue_ns"),
    ),
    MAX_DURATION_NS,
)
_MONEY = dict.fromkeys(
    ("cost_tokens", "cost_compute", "cost_energy", "cost_fee", "cost_total"), MAX_CALL_COST
)
_INTEGERS = tuple(
    (_AT[name], name, most, name in _DURATIONS)
    for name, most in {**_COUNTS, **_DURATIONS, **_MONEY}.items()
)
"""(index, column, most, nullable): whole numbers from 0 to ``most``."""
_NULLABLE_TEXT = frozenset(
    {"user", "response_model", "error_type", "error_message", "done_reason", "duration_source"}
    | {"prompt", "reply"}
)
_TEXTS = tuple(
    (_AT[name], name, TEXT_LIMITS.get(name), name in _NULLABLE_TEXT)
    for name in (
        *("id", "trace_id", "span_id", "tenant", "department", "source", "operation"),
        *("upstream_host", "request_model", "currency", "user", "response_model", "status"),
        *("error_type", "error_message", "done_reason", "token_source", "duration_source"),
        *("prompt", "reply"),
    )
)
"""(index, column, longest or None, nullable)."""
_CHOICES = (
    (_AT["status"], "status", frozenset(Status)),
    (_AT["token_source"], "token_source", frozenset(TokenSource)),
    (_AT["duration_source"], "duration_source", frozenset(DurationSource) | {None}),
)
_STARTED, _ENDED, _TAGS = _AT["started_at"], _AT["ended_at"], _AT["tags"]
_HTTP, _RULE = _AT["http_status"], _AT["price_rule_id"]
_FLAGS = (_AT["stream"], _AT["unpriced"])


class _Flag(TypeDecorator[Any]):
    """A boolean column read as stored: SQLite's own reading made ``'abc'`` or ``2`` True."""

    impl = Boolean
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(Integer() if dialect.name == "sqlite" else Boolean())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if type(value) is int and value in (0, 1):
            return bool(value)
        return value  # True or False, or what row_to_span names


class _Tags(TypeDecorator[Any]):
    """The tags column read as stored: text that is no JSON stays that text, to be named."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(Text() if dialect.name == "sqlite" else JSON())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "sqlite" or type(value) is not str:
            return value
        try:
            return json.loads(value)
        except ValueError:
            return value


class _Moment(UTCMicros):
    """A time column read as stored: text or a REAL where SQLite keeps an integer stays as it is."""

    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        try:
            return super().process_result_value(value, dialect)
        except LedgerError:
            return value


_AS_STORED: dict[str, TypeEngine[Any]] = {
    "stream": _Flag(),
    "unpriced": _Flag(),
    "tags": _Tags(),
    "started_at": _Moment(),
    "ended_at": _Moment(),
}


def read_as_stored(columns: Sequence[ColumnElement[Any]]) -> tuple[ColumnElement[Any], ...]:
    """``columns`` of the spans table, those whose type would read a hostile value wrongly
    (or fail on it) read as stored instead, for :func:`row_to_span` to name."""
    return tuple(
        type_coerce(column, _AS_STORED[column.key]).label(column.key)
        if column.key in _AS_STORED
        else column
        for column in columns
    )


def row_to_span(row: Any) -> SpanRecord:
    """The span a ``select_spans`` row holds (by position), or LedgerError naming what is wrong.

    One pass of type and range checks: the common row (every value as ometer wrote it)
    costs a comparison a column, export's millions of rows included."""
    for index, name, most, nullable in _INTEGERS:
        value = row[index]
        if type(value) is not int or not 0 <= value <= most:
            if value is None and nullable:
                continue
            raise _named(row, name, f"a whole number from 0 to {most}", "0")
    for index, name, longest, nullable in _TEXTS:
        value = row[index]
        if type(value) is not str or (longest is not None and len(value) > longest):
            if value is None and nullable:
                continue
            raise _named(row, name, _text(longest, nullable), "NULL" if nullable else "'...'")
    for index, name, known in _CHOICES:
        if row[index] not in known:
            shown = ", ".join(sorted(filter(None, known)))
            raise _named(row, name, f"one of {shown}", f"'{sorted(filter(None, known))[0]}'")
    if not _CURRENCY.fullmatch(row[_AT["currency"]]):
        raise _named(row, "currency", "a 3-letter code in capitals, like USD", "'USD'")
    if type(row[_STARTED]) is not datetime:
        raise _named(row, "started_at", "a time", "...")
    if row[_ENDED] is not None and type(row[_ENDED]) is not datetime:
        raise _named(row, "ended_at", "a time, or NULL", "NULL")
    tags = row[_TAGS]
    if type(tags) is not dict or not all(type(v) is str for v in tags.values()):
        raise _named(row, "tags", "a JSON object of texts", "'{}'")
    for index in _FLAGS:
        if type(row[index]) is not bool:
            raise _named(row, _FIELDS[index], "0 or 1", "0")
    http = row[_HTTP]
    if http is not None and (type(http) is not int or not 100 <= http <= 999):
        raise _named(row, "http_status", "an HTTP status from 100 to 999, or NULL", "NULL")
    rule = row[_RULE]
    if rule is not None and (type(rule) is not int or not 0 < rule < 2**31):
        raise _named(row, "price_rule_id", "a price rule's id, or NULL", "NULL")
    return SpanRecord(*row)


def _text(longest: int | None, nullable: bool) -> str:
    what = "a text" if longest is None else f"a text of at most {longest} characters"
    return f"{what}, or NULL" if nullable else what


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _named(row: Any, column: str, expected: str, example: str) -> LedgerError:
    """The error for one span's column: which span, what it holds, what it must, the fix."""
    span_id = row[0]
    plain = isinstance(span_id, str) and span_id.isprintable() and "'" not in span_id
    where = f"WHERE id = {span_id!r}" if plain else f"WHERE id = {_shown(span_id)}"
    name = span_id if plain and len(span_id) <= 80 else _shown(span_id)
    value = row[_AT[column]]
    holds = "NULL" if value is None else _shown(value)
    return LedgerError(
        f"span {name} in the ledger cannot be read: its {column} is {holds}, "
        f"not {expected}; fix it in SQL (`UPDATE spans SET {column} = {example} {where}`, "
        "with the value the call had), or remove it (`DELETE FROM spans "
        f"{where}`), then run `ometer db rollup`"
    )
