"""The performance report (``ometer perf``): where the time of metered calls goes.

Owns the per-group figures (latency and time-to-first-token percentiles,
generation speed, cold loads, time queued inside Ollama, error rate) and the
nearest-rank :func:`percentile` they rest on. Reads the ledger with one SELECT
of the few columns it needs and computes in Python, because percentiles have no
portable SQL; never writes the ledger. Every figure is an int or an exactly
rounded Decimal, never a float, so CSV and JSON are the same bytes every run.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._aggregate import GROUP_COLUMNS, timing_rows
from ollama_meter.meter.span import Status
from ollama_meter.periods import Window, bucket_bounds

PERF_BY_CHOICES: tuple[str, ...] = tuple(GROUP_COLUMNS)
PERF_DEFAULT_BY: tuple[str, ...] = ("model", "department")
PERF_METRICS: tuple[str, ...] = (
    "requests",
    "errors",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "tokens_per_s",
    "cold_loads",
    "cold_load_s",
    "queue_p50_ms",
    "queue_p95_ms",
)

COLD_LOAD_NS = 100_000_000
"""A ``load_duration`` at or above this (100 ms) means the model was loaded for the call.

Ollama reports a few milliseconds of load time when the model is already in
memory, and hundreds of milliseconds to seconds when it has to read the weights.
"""

WORST: dict[str, str] = {
    "latency_p95_ms": "max",
    "tokens_per_s": "min",
    "error_rate": "max",
    "cold_load_s": "max",
}
"""The columns whose worst cell :meth:`PerfReport.worst` points out, and which end is worst."""

T = TypeVar("T")


def percentile(sorted_values: Sequence[T], p: float | Decimal) -> T | None:
    """The nearest-rank ``p``-th percentile (0 < p ≤ 100) of ascending ``sorted_values``.

    The value at 1-based rank ⌈p/100 · n⌉: the smallest value with at least ``p``
    percent of the values at or below it. It is always one of the values, never
    an interpolation, so a p99 latency is one some call really had. The rank is
    computed with exact fractions (p95 of 20 values is rank 19, never 20 through
    float error). None when there are no values.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile p must be in (0, 100], not {p}")
    if not sorted_values:
        return None
    rank = math.ceil(Fraction(p) * len(sorted_values) / 100)
    return sorted_values[rank - 1]


def parse_perf_by(text: str) -> list[str]:
    """``"model,department"`` → the group columns, validated."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in PERF_BY_CHOICES]
    if unknown:
        raise ValidationError(
            f"--by {', '.join(unknown)} is not one of: {', '.join(PERF_BY_CHOICES)}"
        )
    if len(set(names)) != len(names):
        raise ValidationError("--by names a column twice")
    return names


def _fixed(value: Fraction, places: int) -> Decimal:
    """``value`` rounded once, half to even, to ``places`` decimals: exact, unlike float."""
    return Decimal(round(value * 10**places)).scaleb(-places)


def _ms(ns: int | None) -> Decimal | None:
    return None if ns is None else _fixed(Fraction(ns, 1_000_000), 3)


@dataclass
class _Samples:
    """What one group's spans contribute, kept raw until the row is computed."""

    requests: int = 0
    errors: int = 0
    latency_ns: list[int] = field(default_factory=list)
    ttft_ns: list[int] = field(default_factory=list)
    tokens_per_s: list[Fraction] = field(default_factory=list)
    cold_loads: int = 0
    cold_load_ns: int = 0
    queue_ns: list[int] = field(default_factory=list)

    def add(self, call: Any) -> None:
        self.requests += 1
        if call.status == Status.ERROR:
            self.errors += 1
        if call.latency_ns is not None:
            self.latency_ns.append(call.latency_ns)
        if call.ttft_ns is not None:
            self.ttft_ns.append(call.ttft_ns)
        reported = call.duration_source != "measured"  # Ollama's speed, not the network's
        if reported and call.output_tokens > 0 and (call.eval_duration_ns or 0) > 0:
            self.tokens_per_s.append(Fraction(call.output_tokens * 10**9, call.eval_duration_ns))
        load = call.load_duration_ns or 0
        if load >= COLD_LOAD_NS:
            self.cold_loads += 1
            self.cold_load_ns += load
        if call.total_duration_ns is not None:
            busy = load + (call.prompt_eval_duration_ns or 0) + (call.eval_duration_ns or 0)
            # Durations are measured separately and can overlap by a hair; waiting is never negative.
            self.queue_ns.append(max(0, call.total_duration_ns - busy))

    def metrics(self) -> dict[str, object]:
        latency = sorted(self.latency_ns)
        ttft = sorted(self.ttft_ns)
        queue = sorted(self.queue_ns)
        speed = percentile(sorted(self.tokens_per_s), 50)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _fixed(Fraction(self.errors, self.requests), 4),
            "latency_p50_ms": _ms(percentile(latency, 50)),
            "latency_p95_ms": _ms(percentile(latency, 95)),
            "latency_p99_ms": _ms(percentile(latency, 99)),
            "ttft_p50_ms": _ms(percentile(ttft, 50)),
            "ttft_p95_ms": _ms(percentile(ttft, 95)),
            "tokens_per_s": None if speed is None else _fixed(speed, 1),
            "cold_loads": self.cold_loads,
            "cold_load_s": _fixed(Fraction(self.cold_load_ns, 10**9), 3),
            "queue_p50_ms": _ms(percentile(queue, 50)),
            "queue_p95_ms": _ms(percentile(queue, 95)),
        }


@dataclass
class PerfReport:
    window: Window
    by: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)
    """Dicts keyed by :attr:`columns`, ordered by the ``by`` values; None where no call had the value."""

    @property
    def columns(self) -> list[str]:
        return [*self.by, *PERF_METRICS]

    def worst(self) -> dict[str, set[int]]:
        """Per :data:`WORST` column, the indexes of the rows holding its worst value.

        Only with two rows or more, and only in a column whose values differ:
        when every group is equally slow (or nothing failed) no one stands out.
        """
        marked: dict[str, set[int]] = {}
        if len(self.rows) < 2:
            return marked
        for column, end in WORST.items():
            values = {
                index: value
                for index, row in enumerate(self.rows)
                if isinstance(value := row[column], Decimal)
            }
            distinct = set(values.values())
            if len(distinct) < 2:
                continue
            worst = max(distinct) if end == "max" else min(distinct)
            marked[column] = {index for index, value in values.items() if value == worst}
        return marked


def perf_report(
    ledger: Ledger,
    window: Window,
    by: Sequence[str],
    *,
    unit: str | None = None,
    tz: ZoneInfo | None = None,
    tenant: str | None = None,
    department: str | None = None,
    model: str | None = None,
) -> PerfReport:
    """Latency, TTFT, speed, cold loads and queueing per ``by`` group over ``window``.

    With a time ``unit`` (``day``, ``week``, ``month``, cut in ``tz``) each group is
    also split per period, which becomes the last ``by`` column; rows keep time order.
    """
    where = SpanFilter(
        since=window.start, until=window.end, tenant=tenant, department=department, model=model
    )
    bounds = bucket_bounds(window, unit, tz or ZoneInfo("UTC")) if unit else []
    starts = [start for start, _ in bounds]
    groups: dict[tuple[Any, ...], _Samples] = {}
    with ledger.read() as conn:
        for call in conn.execute(timing_rows(where, by)):
            keys: tuple[Any, ...] = tuple(str(call[index]) for index in range(len(by)))
            if unit:
                keys = (*keys, max(bisect.bisect_right(starts, call.started_at) - 1, 0))
            groups.setdefault(keys, _Samples()).add(call)
    columns = [*by, unit] if unit else list(by)
    report = PerfReport(window=window, by=columns)
    for keys in sorted(groups):
        labels = list(keys[: len(by)])
        if unit:
            labels.append(bounds[keys[-1]][1])
        row: dict[str, object] = dict(zip(columns, labels, strict=True))
        row.update(groups[keys].metrics())
        report.rows.append(row)
    return report
