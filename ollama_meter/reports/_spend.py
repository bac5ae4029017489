"""The spend report (``ometer report``): ledger aggregates → rows with exact sums."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import GROUPS, Ledger, SpanFilter
from ollama_meter.periods import TIME_UNITS, Window, bucket_bounds

BY_CHOICES = (*GROUPS, *TIME_UNITS)
METRICS = ("requests", "errors", "input_tokens", "output_tokens", "gpu_seconds", "cost", "currency")


def parse_by(text: str) -> list[str]:
    """``"tenant,department,model"`` → the group columns; at most one time unit."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in BY_CHOICES]
    if unknown:
        raise ValidationError(f"--by {', '.join(unknown)} is not one of: {', '.join(BY_CHOICES)}")
    if sum(name in TIME_UNITS for name in names) > 1:
        raise ValidationError("--by takes at most one of day, week, month")
    if len(set(names)) != len(names):
        raise ValidationError("--by names a column twice")
    return names


def gpu_seconds(ns: int) -> Decimal:
    """Nanoseconds as exact seconds (nine decimals)."""
    return Decimal(ns).scaleb(-9)


@dataclass
class SpendReport:
    window: Window
    by: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)
    """``columns`` plus ``unpriced_requests`` (calls no price rule matched)."""
    unpriced_requests: int = 0

    @property
    def columns(self) -> list[str]:
        return [*self.by, *METRICS]

    def totals(self) -> list[dict[str, object]]:
        """One total row per currency (sums of different currencies are meaningless)."""
        return self.rollup([])

    def rollup(self, by: Sequence[str]) -> list[dict[str, object]]:
        """The rows summed down to ``by`` (some of this report's columns), per currency.

        Ordered by the ``by`` values, then currency; a subtotal never mixes currencies.
        """
        sums: dict[tuple[str, ...], dict[str, object]] = {}
        for row in self.rows:
            key = (*(str(row[name]) for name in by), str(row["currency"]))
            total = sums.get(key)
            if total is None:
                total = sums[key] = {name: row[name] for name in by}
                total.update(dict.fromkeys(_COUNTS, 0), gpu_seconds=Decimal(0))
                total["currency"] = row["currency"]
            for name in _COUNTS:
                total[name] = _int(total[name]) + _int(row[name])
            total["gpu_seconds"] = _decimal(total["gpu_seconds"]) + _decimal(row["gpu_seconds"])
        return [sums[key] for key in sorted(sums)]


_COUNTS = ("requests", "errors", "input_tokens", "output_tokens", "cost", "unpriced_requests")


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _decimal(value: object) -> Decimal:
    assert isinstance(value, Decimal)
    return value


def spend_report(
    ledger: Ledger,
    window: Window,
    by: Sequence[str],
    *,
    tz: ZoneInfo,
    tenant: str | None = None,
    department: str | None = None,
    model: str | None = None,
) -> SpendReport:
    """Rows ordered by the ``by`` columns (time in order), then currency. ``cost`` is micro-units."""
    group = [name for name in by if name in GROUPS]
    unit = next((name for name in by if name in TIME_UNITS), None)
    bounds = bucket_bounds(window, unit, tz) if unit else []
    where = SpanFilter(
        since=window.start, until=window.end, tenant=tenant, department=department, model=model
    )
    aggregates = ledger.spend(where, group, [start for start, _ in bounds])
    report = SpendReport(window=window, by=list(by))
    sortable = []
    for agg in aggregates:
        values = dict(zip(group, agg.keys, strict=True))
        if unit:
            values[unit] = bounds[agg.bucket][1]
        row: dict[str, object] = {name: values[name] for name in by}
        row.update(
            requests=agg.requests,
            errors=agg.errors,
            input_tokens=agg.input_tokens,
            output_tokens=agg.output_tokens,
            gpu_seconds=gpu_seconds(agg.gpu_ns),
            cost=agg.cost,
            currency=agg.currency,
            unpriced_requests=agg.unpriced_requests,
        )
        report.unpriced_requests += agg.unpriced_requests
        order = tuple(agg.bucket if name == unit else values[name] for name in by)
        sortable.append(((order, agg.currency), row))
    sortable.sort(key=lambda item: item[0])
    report.rows = [row for _, row in sortable]
    return report
