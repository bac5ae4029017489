"""The ledger's tables, as SQLAlchemy Core tables in one :data:`METADATA`.

Changing a table needs a new Alembic migration in ``migrations/versions``; a
test compares the two. Released migrations are never edited: fix forward.
Every query of the package is Core SQL over these tables, so they are plain ``Table``
objects, not ORM classes: mapping them loaded ``sqlalchemy.orm`` and configured a mapper
per table in every command, a sixth of a short command's start-up (``bench/startup.py``).
"""

from functools import partial

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

from ollama_meter.ledger._types import DecimalText, UTCDateTime, UTCMicros

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

METADATA = MetaData(naming_convention=NAMING_CONVENTION)

_NotNull = partial(Column, nullable=False)
"""A column that always holds a value. Core's ``Column`` is nullable unless told (the
ORM's ``Mapped[...]`` said it), so each column here says which it is."""
_Nullable = partial(Column, nullable=True)

SPANS = Table(
    "spans",
    METADATA,
    _NotNull("id", String(26), primary_key=True),
    _NotNull("trace_id", String(32)),
    _NotNull("span_id", String(16)),
    _NotNull("started_at", UTCMicros()),
    _Nullable("ended_at", UTCMicros()),
    _NotNull("tenant", String(64)),
    _NotNull("department", String(64)),
    _Nullable("user", String(128)),
    _NotNull("tags", JSON, default=dict),
    _NotNull("source", String(16)),
    _NotNull("operation", String(32)),
    _NotNull("upstream_host", String(255)),
    _NotNull("request_model", String(255)),
    _Nullable("response_model", String(255)),
    _NotNull("stream", Boolean),
    _NotNull("status", String(16)),
    _Nullable("error_type", String(32)),
    _Nullable("error_message", Text),
    _Nullable("http_status", Integer),
    _Nullable("done_reason", String(32)),
    _NotNull("input_tokens", Integer),
    _NotNull("output_tokens", Integer),
    _NotNull("token_source", String(16)),
    _Nullable("total_duration_ns", BigInteger),
    _Nullable("load_duration_ns", BigInteger),
    _Nullable("prompt_eval_duration_ns", BigInteger),
    _Nullable("eval_duration_ns", BigInteger),
    _Nullable("duration_source", String(16)),
    _Nullable("latency_ns", BigInteger),
    _Nullable("ttft_ns", BigInteger),
    _Nullable("queue_ns", BigInteger),
    _NotNull("cost_tokens", BigInteger),
    _NotNull("cost_compute", BigInteger),
    _NotNull("cost_energy", BigInteger),
    _NotNull("cost_fee", BigInteger),
    _NotNull("cost_total", BigInteger),
    _NotNull("currency", String(3)),
    _Nullable("price_rule_id", Integer),
    _NotNull("unpriced", Boolean),
    _Nullable("prompt", Text),
    _Nullable("reply", Text),
    # Reports, budgets and chargeback read rollups; raw spans are found by time (export,
    # prune, the open edge) or by id. Nothing else pays for an index on every span.
    Index("ix_spans_started_at", "started_at"),
)
"""One metered call per row. Columns mirror :class:`ollama_meter.meter.SpanRecord`."""

ROLLUPS = Table(
    "rollups",
    METADATA,
    _NotNull("grain", SmallInteger),
    _NotNull("start", BigInteger),
    _NotNull("tenant", String(64)),
    _NotNull("department", String(64)),
    _NotNull("user", String(128)),
    _NotNull("model", String(255)),
    _NotNull("currency", String(3)),
    _NotNull("status", String(16)),
    _NotNull("error_type", String(32)),
    _NotNull("requests", BigInteger),
    _NotNull("input_tokens", BigInteger),
    _NotNull("output_tokens", BigInteger),
    _NotNull("busy_ns", BigInteger),
    _NotNull("load_ns", BigInteger),
    _NotNull("cost_tokens", BigInteger),
    _NotNull("cost_compute", BigInteger),
    _NotNull("cost_energy", BigInteger),
    _NotNull("cost_fee", BigInteger),
    _NotNull("cost_total", BigInteger),
    _NotNull("unpriced", BigInteger),
    _NotNull("unpriced_tokens", BigInteger),
    _NotNull("cold_loads", BigInteger),
    _NotNull("cold_load_ns", BigInteger),
    _NotNull("errors", BigInteger),
    _NotNull("unpriced_usage", BigInteger),
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
    # Rollup tables are their primary key: no rowid beside it, no second copy of the key.
    sqlite_with_rowid=False,
)
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

HISTOGRAM_BINS = 75
"""Bins per decade in ``rollup_histograms`` (see ``ollama_meter.ledger._rollup``)."""

ROLLUP_HISTOGRAMS = Table(
    "rollup_histograms",
    METADATA,
    _NotNull("grain", SmallInteger),
    _NotNull("start", BigInteger),
    _NotNull("tenant", String(64)),
    _NotNull("department", String(64)),
    _NotNull("model", String(255)),
    _NotNull("metric", SmallInteger),
    _NotNull("decade", SmallInteger),
    *(_NotNull(f"b{index:02d}", BigInteger) for index in range(HISTOGRAM_BINS)),
    PrimaryKeyConstraint("grain", "start", "tenant", "department", "model", "metric", "decade"),
    sqlite_with_rowid=False,
)
"""How many calls of a (tenant, department, model) fell in each bin of one decade, per cell.

Cells are days and months of the ledger's zone (percentiles are merged from bins; finer
cells would cost a row per call), and quarter hours for all calls together (key ``*``). ``metric`` is latency, TTFT, Ollama's queue, generation
speed or the gateway's queue (``ollama_meter.ledger._cells.Metric``);
``decade`` the power of ten the row's 75 bins ``b00`` ... ``b74`` divide.
"""

ROLLUP_BUSY = Table(
    "rollup_busy",
    METADATA,
    _NotNull("start", BigInteger),
    _NotNull("host", String(255)),
    _NotNull("intervals", Text),
    _NotNull("busy_us", BigInteger),
    _NotNull("calls", BigInteger),
    PrimaryKeyConstraint("start", "host"),
    sqlite_with_rowid=False,
)
"""One upstream host's busy time in one minute, as the union of its calls' intervals.

``intervals`` lists the merged intervals as ``begin-end`` microsecond offsets from
``start``, comma-separated; ``busy_us`` is their total length. ``calls`` counts the
calls that started in the minute on the host (rows from before 0011 count 1). A row
with no intervals says the host served calls then without being busy (it still adds
capacity).
"""

ROLLUP_BUSY_CELLS = Table(
    "rollup_busy_cells",
    METADATA,
    _NotNull("grain", SmallInteger),
    _NotNull("start", BigInteger),
    _NotNull("host", String(255)),
    _NotNull("busy_us", BigInteger),
    _NotNull("calls", BigInteger),
    PrimaryKeyConstraint("grain", "start", "host"),
    sqlite_with_rowid=False,
)
"""One host's busy minutes summed over a day or month of the ledger's zone.

``busy_us`` and ``calls`` are the sums of the minutes' (:data:`ROLLUP_BUSY`) whose
start is in the cell: a host was there in a window when either sum over it is not 0.
A month or a whole day of busy time is then one row a host, not 1,440 a day.
"""

LEDGER_META = Table(
    "ledger_meta",
    METADATA,
    _NotNull("key", String(64), primary_key=True),
    _NotNull("value", String(255)),
)
"""Facts about the ledger itself: where raw spans were pruned, whether rollups need a rebuild."""

PRICE_RULES = Table(
    "price_rules",
    METADATA,
    _NotNull("id", Integer, primary_key=True, autoincrement=True),
    _NotNull("pattern", String(255)),
    _NotNull("currency", String(3)),
    _Nullable("input_per_1m", DecimalText()),
    _Nullable("output_per_1m", DecimalText()),
    _Nullable("gpu_hour", DecimalText()),
    _Nullable("watts", DecimalText()),
    _Nullable("kwh_price", DecimalText()),
    _Nullable("per_request", DecimalText()),
    _Nullable("fee_per_1m", DecimalText()),
    _NotNull("charge_load", Boolean, default=False),
    _Nullable("effective_from", Date),
    _Nullable("effective_until", Date),
    _NotNull("source", String(512), default="cli"),
    _Nullable("source_digest", String(64)),
    _NotNull("created_at", UTCDateTime()),
    # Never reuse a removed rule's id on SQLite: the spans it priced keep naming it.
    sqlite_autoincrement=True,
)
"""Price rules (see :class:`ollama_meter.pricing.PriceRule`)."""

BUDGETS = Table(
    "budgets",
    METADATA,
    _NotNull("id", Integer, primary_key=True, autoincrement=True),
    _NotNull("tenant", String(64)),
    _Nullable("department", String(64)),
    _NotNull("period", String(8)),
    _NotNull("limit_micros", BigInteger),
    _NotNull("currency", String(3)),
    _NotNull("hard", Boolean),
    _NotNull("thresholds", String(64)),
    _NotNull("source", String(16)),
    # Since when its terms (limit, currency, hard, thresholds) hold: set first, or changed.
    _NotNull("created_at", UTCDateTime()),
    # Never reuse a removed budget's id on SQLite: its alerts and leases hang on it.
    sqlite_autoincrement=True,
)
"""Spending caps, each on a tenant (``department`` NULL) or one of its departments.

``tenant`` ``*`` means "each tenant's department" (budgets from
``DEPARTMENT_BUDGETS``): every tenant gets its own allowance.
"""

BUDGET_RESERVATIONS = Table(
    "budget_reservations",
    METADATA,
    _NotNull("id", String(26), primary_key=True),
    _NotNull("budget_id", Integer, primary_key=True),
    _NotNull("tenant", String(64)),
    _NotNull("period_start", UTCDateTime()),
    _NotNull("amount_micros", BigInteger),
    _NotNull("expires_at", UTCDateTime()),
    Index("ix_budget_reservations_budget_id", "budget_id", "tenant", "period_start"),
)
"""Money set aside for a call in flight; gone when settled, ignored once expired."""

BUDGET_ALERTS = Table(
    "budget_alerts",
    METADATA,
    _NotNull("id", Integer, primary_key=True, autoincrement=True),
    _NotNull("budget_id", Integer),
    _NotNull("tenant", String(64)),
    _Nullable("department", String(64)),
    _NotNull("period", String(8)),
    _NotNull("period_start", UTCDateTime()),
    _NotNull("period_label", String(16)),
    _NotNull("threshold", Integer),
    _NotNull("spent_micros", BigInteger),
    _NotNull("limit_micros", BigInteger),
    _NotNull("currency", String(3)),
    _NotNull("fired_at", UTCDateTime()),
    _NotNull("deliveries", JSON, default=dict),
    _NotNull("delivered", Boolean),
    _NotNull("attempts", Integer),
    # While in the future, a process is delivering the alert: no other sends it meanwhile.
    _Nullable("claimed_until", UTCDateTime()),
    _NotNull("kind", String(16), server_default="threshold"),
    # A refusal's: the most the refused call could cost.
    _Nullable("call_bound_micros", BigInteger),
    UniqueConstraint("budget_id", "tenant", "period_start", "kind", "threshold"),
)
"""Thresholds crossed, each once per budget, tenant, period and threshold, or calls a hard
budget refused (``kind`` ``refused``: once per budget, tenant, period and the highest
threshold the spend had reached then, 0 for none); and where each went."""

API_KEYS = Table(
    "api_keys",
    METADATA,
    _NotNull("id", Integer, primary_key=True, autoincrement=True),
    _NotNull("name", String(64)),
    _NotNull("tenant", String(64)),
    _NotNull("department", String(64)),
    _NotNull("prefix", String(16)),
    _NotNull("key_hash", String(64)),
    _NotNull("created_at", UTCDateTime()),
    _Nullable("revoked_at", UTCDateTime()),
    # The one user this key's calls are charged to, whatever a header says.
    _Nullable("user", String(128)),
    # Comma-separated users this key may name in ``X-Ometer-User`` (names have no commas).
    _Nullable("allowed_users", Text()),
    # From this instant the key is no live key, as if revoked then (none: until revoked).
    _Nullable("expires_at", UTCDateTime()),
    Index("ix_api_keys_prefix", "prefix"),
)
"""Gateway keys: only each key's SHA-256 is kept; the prefix finds it without a scan."""

LIMITS = Table(
    "limits",
    METADATA,
    _NotNull("tenant", String(64)),
    _NotNull("department", String(64)),
    _NotNull("key_id", Integer),
    _Nullable("rpm", Integer),
    _Nullable("tpm", BigInteger),
    _Nullable("concurrency", Integer),
    _Nullable("weight", Integer),
    _NotNull("updated_at", UTCDateTime()),
    PrimaryKeyConstraint("tenant", "department", "key_id"),
)
"""How fast and how much one tenant, department or API key may call, and its share.

``department`` is ``''`` for a limit on the whole tenant; ``key_id`` is 0 except for
a key's own limits (which keep the key's tenant and department, for reading). Any of
``rpm`` (calls per minute), ``tpm`` (tokens per minute), ``concurrency`` (calls
holding a slot at once) and ``weight`` (the share of slots when calls queue) may be
NULL: not limited, or the default weight 1.
"""

MODEL_HISTORY = Table(
    "model_history",
    METADATA,
    _NotNull("model", String(255)),
    _NotNull("id", String(26)),
    _NotNull("input_tokens", BigInteger),
    _NotNull("output_tokens", BigInteger),
    _Nullable("prompt_eval_duration_ns", BigInteger),
    _Nullable("eval_duration_ns", BigInteger),
    _Nullable("load_duration_ns", BigInteger),
    PrimaryKeyConstraint("model", "id"),
    sqlite_with_rowid=False,
)
"""A model's latest successful calls (at most ``_history.KEPT``), what a hard budget bounds a
time-priced call by: ``model`` is the one name the model counts under (``counted_model`` of
the name asked for, whatever its spelling), ``id`` the span's. Written with the spans and cut
back to the latest as it is; a span pruned or repriced leaves its row (its usage stays)."""
