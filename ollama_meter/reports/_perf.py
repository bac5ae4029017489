"""The performance report (``ometer perf``): where the time of metered calls goes.

Owns the per-group figures (latency and time-to-first-token percentiles,
generation speed, cold loads, time queued inside Ollama and in the gateway, error
rate). Counts come from rollup sums; percentiles from histograms kept per day and
month with fixed bins (see ``ollama_meter.ledger._cells.duration_bin``), merged across cells:
a percentile is the edge of the bin that holds the true nearest-rank value, so
it never understates a latency or overstates a speed, by at most 5 %. Never
writes the ledger. Every figure is an int or an exactly rounded Decimal, never a
float, so CSV and JSON are the same bytes every run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger, Metric, SpanFilter, from_us
from ollama_meter.periods import Window
from ollama_meter.reports._choices import PERF_BY_CHOICES
from ollama_meter.reports._rows import PERF_FIGURES, PerfRow
from ollama_meter.reports._spend import with_held_buckets

PERF_METRICS: tuple[str, ...] = PERF_FIGURES

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


def histogram_percentile(bins: Mapping[int, int], p: float | Decimal) -> int | None:
    """:func:`percentile` of the values a histogram counted, as the edge of their bin.

    ``bins`` maps each bin's edge to how many values fell in it. Bins keep the
    order of the values, so the bin holding the rank-th value is the first whose
    running count reaches the rank: the result is exactly the edge of the bin of
    the true nearest-rank percentile.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile p must be in (0, 100], not {p}")
    total = sum(bins.values())
    if total <= 0:
        return None
    rank = math.ceil(Fraction(p) * total / 100)
    seen = 0
    for edge in sorted(bins):
        seen += bins[edge]
        if seen >= rank:
            return edge
    raise AssertionError("unreachable: the counts add up to the total")


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


def _edge(value: int, shift: int, places: int) -> Decimal:
    """A bin's edge ``value / 10**shift`` shown exactly, with at least ``places`` decimals.

    Not rounded: a rounded edge could fall on the wrong side of the true value (a
    speed edge of 1.15 tok/s shown as 1.2, a 2.2 µs wait as 0.002 ms), and an edge
    has at most three significant digits, so it is short anyway.
    """
    exact = Decimal(value).scaleb(-shift)
    padded = exact.quantize(Decimal(1).scaleb(-places))
    return padded if padded == exact else exact.normalize()


def _ms(ns: int | None) -> Decimal | None:
    return None if ns is None else _edge(ns, 6, 3)


@dataclass
class _Group:
    """One group's counts and histograms, from rollups or raw spans alike."""

    requests: int = 0
    errors: int = 0
    cold_loads: int = 0
    cold_load_ns: int = 0
    bins: dict[Metric, dict[int, int]] = field(default_factory=dict)

    def row(self, labels: tuple[tuple[str, str], ...]) -> PerfRow:
        def pct(metric: Metric, p: int) -> int | None:
            return histogram_percentile(self.bins.get(metric, {}), p)

        speed = pct(Metric.SPEED, 50)
        return PerfRow(
            labels,
            requests=self.requests,
            errors=self.errors,
            error_rate=_fixed(Fraction(self.errors, self.requests), 4),
            latency_p50_ms=_ms(pct(Metric.LATENCY, 50)),
            latency_p95_ms=_ms(pct(Metric.LATENCY, 95)),
            latency_p99_ms=_ms(pct(Metric.LATENCY, 99)),
            ttft_p50_ms=_ms(pct(Metric.TTFT, 50)),
            ttft_p95_ms=_ms(pct(Metric.TTFT, 95)),
            tokens_per_s=None if speed is None else _edge(speed, 6, 1),
            cold_loads=self.cold_loads,
            cold_load_s=_fixed(Fraction(self.cold_load_ns, 10**9), 3),
            queue_p50_ms=_ms(pct(Metric.QUEUE, 50)),
            queue_p95_ms=_ms(pct(Metric.QUEUE, 95)),
            gateway_queue_p50_ms=_ms(pct(Metric.GATEWAY_QUEUE, 50)),
            gateway_queue_p95_ms=_ms(pct(Metric.GATEWAY_QUEUE, 95)),
        )


@dataclass
class PerfReport:
    window: Window
    by: list[str]
    rows: list[PerfRow] = field(default_factory=list)
    """Ordered by the ``by`` values; a figure is None where no call had it."""
    warnings: list[str] = field(default_factory=list)

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
    zone = tz or ZoneInfo("UTC")
    where = SpanFilter(
        since=window.start, until=window.end, tenant=tenant, department=department, model=model
    )
    held, (aggregates, histograms) = with_held_buckets(
        ledger,
        window,
        [unit] if unit else [],
        zone,
        lambda held: ledger.timings(where, by, [(s, e) for s, e, _ in held.get(unit or "", [])]),
    )
    bounds = held.get(unit or "", [])
    groups: dict[tuple[Any, ...], _Group] = {}
    for sums in aggregates:
        if unit and sums.bucket >= len(bounds):  # days still coming in: in the next answer
            continue
        keys: tuple[Any, ...] = (*sums.keys, sums.bucket) if unit else sums.keys
        group = groups.setdefault(keys, _Group())
        group.requests += sums.requests
        group.errors += sums.errors
        group.cold_loads += sums.cold_loads
        group.cold_load_ns += sums.cold_load_ns
    for hkeys, bins in histograms.groups.items():
        if hkeys in groups:
            groups[hkeys].bins = bins
    columns = [*by, unit] if unit else list(by)
    report = PerfReport(window=window, by=columns)
    if histograms.pruned_before is not None:
        report.warnings.append(
            "percentiles leave out calls before "
            f"{from_us(histograms.pruned_before).isoformat(timespec='seconds')}: "
            "their raw spans were pruned and this grouping needs them"
        )
    for group_keys in sorted(groups):
        labels = [str(key) for key in group_keys[: len(by)]]
        if unit:
            labels.append(bounds[group_keys[-1]][2])
        report.rows.append(groups[group_keys].row(tuple(zip(columns, labels, strict=True))))
    return report
