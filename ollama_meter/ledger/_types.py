"""Column types that keep the ledger's two promises on every backend: UTC times, exact money."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, String
from sqlalchemy.types import TypeDecorator, TypeEngine

from ollama_meter.errors import LedgerError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def driver_key(dialect: Dialect) -> tuple[str, str, str]:
    """What SQL compiled for ``dialect`` depends on: its SQL, its driver and how it takes parameters.

    Two drivers of one database (psycopg and psycopg2, say) may mark parameters
    differently, so statements compiled once are kept per key, not per database name.
    """
    return (dialect.name, dialect.driver, dialect.paramstyle)


_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch: exact, unlike ``timestamp()``."""
    return (moment - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive datetimes so local time never leaks in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; pass an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL results on SQLite
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class UTCMicros(TypeDecorator[datetime]):
    """A UTC instant: integer microseconds since the epoch on SQLite, a timestamp elsewhere.

    SQLite has no time type; as text a timestamp takes 26 bytes in the row and
    again in every index, as an integer 8. PostgreSQL's own type is already 8 bytes.
    Like :class:`UTCDateTime`, naive datetimes are refused.
    """

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(BigInteger() if dialect.name == "sqlite" else DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; pass an aware datetime")
        if dialect.name == "sqlite":
            return to_us(value)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if type(value) is int:
            try:
                return from_us(value)
            except OverflowError:  # past year 9999, or before year 1
                raise _not_a_time(value) from None
        if not isinstance(value, datetime):
            raise _not_a_time(value)
        return value.replace(tzinfo=UTC)


def _not_a_time(value: object) -> LedgerError:
    """A span time SQLite kept as it came (text, a REAL, a blob): not a bug, a row to fix.
    Readers of whole spans name the span (``_span_rows``); a bare time names the query."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return LedgerError(
        f"a span's time in the ledger cannot be read: it is {shown}, not a time; find the "
        "span with `SELECT id, started_at, ended_at FROM spans WHERE typeof(started_at) != "
        "'integer' OR typeof(ended_at) NOT IN ('integer', 'null')`, set its time in SQL "
        "(microseconds since 1970-01-01 UTC), then run `ometer db rollup`"
    )


class DecimalText(TypeDecorator[Decimal]):
    """A Decimal stored as its exact text: SQLite has no exact numeric type."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"expected Decimal, got {type(value).__name__}")
        return f"{value:f}"

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)
