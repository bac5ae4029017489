"""Report rows: frozen records with typed fields, that renderers read as mappings of their columns.

A row's figures are fields (``row.cost`` is :class:`~ollama_meter.records.Micros`,
``row.gpu_seconds`` a Decimal); the labels it is grouped by (tenant, department,
user, model, a day, week or month) come in the report's order. CSV, JSON, tables
and HTML go through ``row[column]`` and see the very same values, so every
output reads one thing, and money is never re-parsed from text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from ollama_meter.records import Micros


class Row(Mapping[str, object]):
    """A report row: ``labels`` (column, value) in order, then the fields in :attr:`FIGURES`."""

    __slots__ = ()
    FIGURES: ClassVar[tuple[str, ...]]
    labels: tuple[tuple[str, str], ...]

    def label(self, column: str) -> str:
        """The value of a grouping column (``""`` for no user)."""
        for name, value in self.labels:
            if name == column:
                return value
        raise KeyError(column)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(name for name, _ in self.labels), *self.FIGURES)

    def __getitem__(self, column: str) -> object:
        if column in self.FIGURES:
            return getattr(self, column)
        return self.label(column)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.labels) + len(self.FIGURES)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


SPEND_FIGURES = (
    "requests", "errors", "input_tokens", "output_tokens", "gpu_seconds", "cost", "currency",
    "unpriced_requests",
)  # fmt: skip


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SpendRow(Row):
    """One group's usage and spend in one currency (``ometer report``, the dashboard)."""

    FIGURES: ClassVar[tuple[str, ...]] = SPEND_FIGURES
    labels: tuple[tuple[str, str], ...]
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    gpu_seconds: Decimal
    """Busy GPU time, exact to the nanosecond."""
    cost: Micros
    currency: str
    unpriced_requests: int
    """Calls no price rule matched: counted as 0 in ``cost``."""
    capped: bool = False
    """``cost`` is a lower bound: a sum in it passed the largest the ledger's rollups hold and
    the spans behind it were pruned (not a column: :meth:`SpendReport.capped_note` says it)."""


PERF_FIGURES = (
    "requests", "errors", "error_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p95_ms", "tokens_per_s", "cold_loads", "cold_load_s", "queue_p50_ms",
    "queue_p95_ms", "gateway_queue_p50_ms", "gateway_queue_p95_ms",
)  # fmt: skip


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PerfRow(Row):
    """Where one group's time went (``ometer perf``). None: no call had the figure."""

    FIGURES: ClassVar[tuple[str, ...]] = PERF_FIGURES
    labels: tuple[tuple[str, str], ...]
    requests: int
    errors: int
    error_rate: Decimal
    latency_p50_ms: Decimal | None
    latency_p95_ms: Decimal | None
    latency_p99_ms: Decimal | None
    ttft_p50_ms: Decimal | None
    ttft_p95_ms: Decimal | None
    tokens_per_s: Decimal | None
    cold_loads: int
    cold_load_s: Decimal
    queue_p50_ms: Decimal | None
    """Inside Ollama."""
    queue_p95_ms: Decimal | None
    gateway_queue_p50_ms: Decimal | None
    """In the gateway, waiting for a free slot."""
    gateway_queue_p95_ms: Decimal | None


CHARGEBACK_COLUMNS = (
    "month", "tenant", "department", "requests", "input_tokens", "output_tokens",
    "gpu_seconds", "usage_cost", "fixed_cost_share", "total_cost", "currency",
)  # fmt: skip


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ChargebackRow(Row):
    """One tenant and department's bill for a month, in one currency."""

    FIGURES: ClassVar[tuple[str, ...]] = CHARGEBACK_COLUMNS
    month: str
    tenant: str
    department: str
    requests: int
    input_tokens: int
    output_tokens: int
    gpu_seconds: Decimal
    usage_cost: Micros
    fixed_cost_share: Decimal
    """Whole smallest units of the currency (cents, yen, fils) of the fixed monthly cost, as
    an amount with the currency's places (``12.34`` USD, ``1234`` JPY, ``1.234`` KWD)."""
    total_cost: Micros
    currency: str
    labels: tuple[tuple[str, str], ...] = ()
    unpriced_requests: int = 0
    """Calls no price rule matched: 0 in ``usage_cost``. Not a CSV column (cron jobs read
    the columns by position); the bill's warning and the HTML file name them."""


def per_department(rows: list[SpendRow], currency: str) -> dict[tuple[str, str], list[SpendRow]]:
    """``rows`` in ``currency`` by their (tenant, department), each list in the order given.

    A department is a tenant's: two tenants' ``research`` are two departments, never one.
    """
    grouped: dict[tuple[str, str], list[SpendRow]] = defaultdict(list)
    for row in rows:
        if row.currency == currency:
            grouped[(row.label("tenant"), row.label("department"))].append(row)
    return grouped
