"""The ledger's tables as SQLAlchemy 2.0 models.

Changing a model needs a new Alembic migration in ``migrations/versions``; a
test compares the two. Released migrations are never edited: fix forward.
Annotations are objects here, not strings: SQLAlchemy would otherwise evaluate each
``Mapped[...]`` again while every command starts.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ollama_meter.ledger._types import DecimalText, UTCDateTime, UTCMicros

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SpanRow(Base):
    """One metered call. Columns mirror :class:`ollama_meter.meter.SpanRecord`."""

    __tablename__ = "spans"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(32))
    span_id: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCMicros())
    ended_at: Mapped[datetime | None] = mapped_column(UTCMicros())
    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(128))
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16))
    operation: Mapped[str] = mapped_column(String(32))
    upstream_host: Mapped[str] = mapped_column(String(255))
    request_model: Mapped[str] = mapped_column(String(255))
    response_model: Mapped[str | None] = mapped_column(String(255))
    stream: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    done_reason: Mapped[str | None] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    token_source: Mapped[str] = mapped_column(String(16))
    total_duration_ns: Mapped[int | None] = mapped_column(BigInteger)
    load_duration_ns: Mapped[int | None] = mapped_column(BigInteger)
    prompt_eval_duration_ns: Mapped[int | None] = mapped_column(BigInteger)
    eval_duration_ns: Mapped[int | None] = mapped_column(BigInteger)
    duration_source: Mapped[str | None] = mapped_column(String(16))
    latency_ns: Mapped[int | None] = mapped_column(BigInteger)
    ttft_ns: Mapped[int | None] = mapped_column(BigInteger)
    queue_ns: Mapped[int | None] = mapped_column(BigInteger)
    cost_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_compute: Mapped[int] = mapped_column(BigInteger)
    cost_energy: Mapped[int] = mapped_column(BigInteger)
    cost_fee: Mapped[int] = mapped_column(BigInteger)
    cost_total: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    price_rule_id: Mapped[int | None] = mapped_column(Integer)
    unpriced: Mapped[bool] = mapped_column(Boolean)
    prompt: Mapped[str | None] = mapped_column(Text)
    reply: Mapped[str | None] = mapped_column(Text)

    # Reports, budgets and chargeback read rollups; raw spans are found by time (export,
    # prune, the open edge) or by id. Nothing else pays for an index on every span.
    __table_args__ = (Index("ix_spans_started_at", "started_at"),)


_KEY = {"sqlite_with_rowid": False}
"""Rollup tables are their primary key: no rowid beside it, no second copy of the key."""


class RollupRow(Base):
    """Sums over the spans that started in one cell: a quarter hour, or a day or month of the ledger's zone.

    ``grain`` says which (see ``ollama_meter.ledger._cells.Grain``), ``start`` is the
    cell's first second (Unix time, UTC). ``user`` and ``error_type`` are ``''`` when the
    spans had none, ``model`` is the answering model (else the requested one), as
    reports group them. Each row is kept per user, status and error type, and once
    more summed over all three (they are ``*``): the overview most reads take.
    ``busy_ns`` is prompt evaluation plus generation; ``unpriced`` counts spans no rule
    priced, ``unpriced_tokens`` those of them with tokens; ``cold_loads`` counts loads
    of at least 100 ms; ``errors`` and ``unpriced_usage`` are the calls reports count
    as errors and as unpriced usage (``ollama_meter.ledger._cells.measures_of``).
    """

    __tablename__ = "rollups"

    grain: Mapped[int] = mapped_column(SmallInteger)
    start: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str] = mapped_column(String(32))
    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    busy_ns: Mapped[int] = mapped_column(BigInteger)
    load_ns: Mapped[int] = mapped_column(BigInteger)
    cost_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_compute: Mapped[int] = mapped_column(BigInteger)
    cost_energy: Mapped[int] = mapped_column(BigInteger)
    cost_fee: Mapped[int] = mapped_column(BigInteger)
    cost_total: Mapped[int] = mapped_column(BigInteger)
    unpriced: Mapped[int] = mapped_column(BigInteger)
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger)
    cold_loads: Mapped[int] = mapped_column(BigInteger)
    cold_load_ns: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    unpriced_usage: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint(  # the user right after the cell: the overview rows are one range
            "grain",
            "start",
            "user",
            "tenant",
            "department",
            "model",
            "currency",
            "status",
            "error_type",
        ),
        _KEY,
    )


HISTOGRAM_BINS = 75
"""Bins per decade in ``rollup_histograms`` (see ``ollama_meter.ledger._rollup``)."""

ROLLUP_HISTOGRAMS = Table(
    "rollup_histograms",
    Base.metadata,
    Column("grain", SmallInteger, nullable=False),
    Column("start", BigInteger, nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("department", String(64), nullable=False),
    Column("model", String(255), nullable=False),
    Column("metric", SmallInteger, nullable=False),
    Column("decade", SmallInteger, nullable=False),
    *(Column(f"b{index:02d}", BigInteger, nullable=False) for index in range(HISTOGRAM_BINS)),
    PrimaryKeyConstraint("grain", "start", "tenant", "department", "model", "metric", "decade"),
    sqlite_with_rowid=False,
)
"""How many calls of a (tenant, department, model) fell in each bin of one decade, per cell.

Cells are days and months of the ledger's zone (percentiles are merged from bins; finer
cells would cost a row per call), and quarter hours for all calls together (key ``*``). ``metric`` is latency, TTFT, Ollama's queue, generation
speed or the gateway's queue (``ollama_meter.ledger._cells.Metric``);
``decade`` the power of ten the row's 75 bins ``b00`` ... ``b74`` divide.
"""


class RollupBusyRow(Base):
    """One upstream host's busy time in one minute, as the union of its calls' intervals.

    ``intervals`` lists the merged intervals as ``begin-end`` microsecond offsets from
    ``start``, comma-separated; ``busy_us`` is their total length. ``calls`` counts the
    calls that started in the minute on the host (rows from before 0011 count 1). A row
    with no intervals says the host served calls then without being busy (it still adds
    capacity).
    """

    __tablename__ = "rollup_busy"

    start: Mapped[int] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255))
    intervals: Mapped[str] = mapped_column(Text)
    busy_us: Mapped[int] = mapped_column(BigInteger)
    calls: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (PrimaryKeyConstraint("start", "host"), _KEY)


class RollupBusyCellRow(Base):
    """One host's busy minutes summed over a day or month of the ledger's zone.

    ``busy_us`` and ``calls`` are the sums of the minutes' (:class:`RollupBusyRow`) whose
    start is in the cell: a host was there in a window when either sum over it is not 0.
    A month or a whole day of busy time is then one row a host, not 1,440 a day.
    """

    __tablename__ = "rollup_busy_cells"

    grain: Mapped[int] = mapped_column(SmallInteger)
    start: Mapped[int] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255))
    busy_us: Mapped[int] = mapped_column(BigInteger)
    calls: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (PrimaryKeyConstraint("grain", "start", "host"), _KEY)


class LedgerMetaRow(Base):
    """Facts about the ledger itself: where raw spans were pruned, whether rollups need a rebuild."""

    __tablename__ = "ledger_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class PriceRuleRow(Base):
    """A price rule (see :class:`ollama_meter.pricing.PriceRule`)."""

    __tablename__ = "price_rules"
    # Never reuse a removed rule's id on SQLite: the spans it priced keep naming it.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pattern: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    input_per_1m: Mapped[Decimal | None] = mapped_column(DecimalText())
    output_per_1m: Mapped[Decimal | None] = mapped_column(DecimalText())
    gpu_hour: Mapped[Decimal | None] = mapped_column(DecimalText())
    watts: Mapped[Decimal | None] = mapped_column(DecimalText())
    kwh_price: Mapped[Decimal | None] = mapped_column(DecimalText())
    per_request: Mapped[Decimal | None] = mapped_column(DecimalText())
    fee_per_1m: Mapped[Decimal | None] = mapped_column(DecimalText())
    charge_load: Mapped[bool] = mapped_column(Boolean, default=False)
    effective_from: Mapped[date | None] = mapped_column(Date)
    effective_until: Mapped[date | None] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(512), default="cli")
    source_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BudgetRow(Base):
    """A spending cap on a tenant (``department`` None) or one of its departments.

    ``tenant`` ``*`` means "each tenant's department" (budgets from
    ``DEPARTMENT_BUDGETS``): every tenant gets its own allowance.
    """

    __tablename__ = "budgets"
    # Never reuse a removed budget's id on SQLite: its alerts and leases hang on it.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str | None] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(8))
    limit_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    hard: Mapped[bool] = mapped_column(Boolean)
    thresholds: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReservationRow(Base):
    """Money set aside for a call in flight; gone when settled, ignored once expired."""

    __tablename__ = "budget_reservations"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    budget_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_budget_reservations_budget_id", "budget_id", "tenant", "period_start"),
    )


class AlertRow(Base):
    """A threshold crossed, once per budget, tenant, period and threshold, or a call a hard
    budget refused (``kind`` ``refused``: once per budget, tenant, period and the highest
    threshold the spend had reached then, 0 for none); and where it went."""

    __tablename__ = "budget_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    budget_id: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str | None] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(8))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_label: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int] = mapped_column(Integer)
    spent_micros: Mapped[int] = mapped_column(BigInteger)
    limit_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deliveries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    delivered: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """While in the future, a process is delivering the alert: no other sends it meanwhile."""
    kind: Mapped[str] = mapped_column(String(16), server_default="threshold")
    call_bound_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """A refusal's: the most the refused call could cost."""

    __table_args__ = (UniqueConstraint("budget_id", "tenant", "period_start", "kind", "threshold"),)


class ApiKeyRow(Base):
    """A gateway key: only its SHA-256 is kept; the prefix finds it without a scan."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    user: Mapped[str | None] = mapped_column(String(128))
    """The one user this key's calls are charged to, whatever a header says."""
    allowed_users: Mapped[str | None] = mapped_column(Text())
    """Comma-separated users this key may name in ``X-Ometer-User`` (names have no commas)."""

    __table_args__ = (Index("ix_api_keys_prefix", "prefix"),)


class LimitRow(Base):
    """How fast and how much one tenant, department or API key may call, and its share.

    ``department`` is ``''`` for a limit on the whole tenant; ``key_id`` is 0 except for
    a key's own limits (which keep the key's tenant and department, for reading). Any of
    ``rpm`` (calls per minute), ``tpm`` (tokens per minute), ``concurrency`` (calls
    holding a slot at once) and ``weight`` (the share of slots when calls queue) may be
    NULL: not limited, or the default weight 1.
    """

    __tablename__ = "limits"

    tenant: Mapped[str] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[int] = mapped_column(Integer)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    weight: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (PrimaryKeyConstraint("tenant", "department", "key_id"),)
