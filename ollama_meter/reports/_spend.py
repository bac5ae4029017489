"""The spend report (``ometer report``): ledger aggregates → rows with exact sums."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import GROUPS, Ledger, SpanFilter
from ollama_meter.periods import TIME_UNITS, Window, bucket_bounds, day_of, local_midnight
from ollama_meter.records import Micros
from ollama_meter.reports._choices import BY_CHOICES
from ollama_meter.reports._rows import SpendRow

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


LONG_WINDOW = timedelta(days=400)
"""Windows longer than this are first cut to the days that hold calls."""


def within_data(ledger: Ledger, window: Window, tz: ZoneInfo) -> Window:
    """``window`` cut to the local days from the first call to the last, when it is long.

    Sums do not change (nothing is outside), but ``--since 1970-01-01 --until 9998-12-31
    --by day`` plans and buckets a few days of data, not three million empty ones.
    """
    if window.end - window.start <= LONG_WINDOW:
        return window
    extent = ledger.extent()
    first_day = day_of(window.start, tz)
    start, end = window.start, local_midnight(first_day + timedelta(days=1), tz)  # no data
    if extent is not None:
        first, last = (day_of(moment, tz) for moment in extent)
        start = max(window.start, local_midnight(first, tz))
        end = min(window.end, local_midnight(last + timedelta(days=1), tz))
        if start >= end:  # every call is outside the window
            start, end = window.start, local_midnight(first_day + timedelta(days=1), tz)
    return Window(start, end, window.label)


def gpu_seconds(ns: int) -> Decimal:
    """Nanoseconds as exact seconds (nine decimals)."""
    return Decimal(ns).scaleb(-9)


@dataclass
class SpendReport:
    window: Window
    by: list[str]
    rows: list[SpendRow] = field(default_factory=list)
    """One per group and currency; ``columns`` and ``unpriced_requests`` (no price rule matched)."""
    unpriced_requests: int = 0
    _rollups: dict[tuple[str, ...], list[SpendRow]] = field(default_factory=dict, repr=False)
    """Rollups already summed, per ``by``: :func:`spend_report` sets ``rows`` once, before any."""

    @property
    def columns(self) -> list[str]:
        return [*self.by, *METRICS]

    def totals(self) -> list[SpendRow]:
        """One total row per currency (sums of different currencies are meaningless)."""
        return self.rollup([])

    def rollup(self, by: Sequence[str]) -> list[SpendRow]:
        """The rows summed down to ``by`` (some of this report's columns), per currency.

        Ordered by the ``by`` values, then currency; a subtotal never mixes currencies.
        """
        key = tuple(by)
        cached = self._rollups.get(key)
        if cached is None:
            # Sums are exact and add up in any order: start from the fewest rows that have
            # every column asked (a rollup already made, else the report's own rows).
            finer = [rows for done, rows in self._rollups.items() if set(key) <= set(done)]
            cached = self._rollups[key] = _rolled_up(min(finer, key=len, default=self.rows), key)
        return cached


def _rolled_up(rows: list[SpendRow], by: tuple[str, ...]) -> list[SpendRow]:
    """``rows`` (labelled alike) summed per ``by`` values and currency, in that order."""
    groups: dict[tuple[str, ...], list[SpendRow]] = {}
    if rows:
        # Every row has its labels in the same order: find the columns once.
        names = [name for name, _ in rows[0].labels]
        at = [names.index(name) for name in by]
        for row in rows:
            labels = row.labels
            group = (*(labels[i][1] for i in at), row.currency)
            found = groups.get(group)
            if found is None:
                groups[group] = [row]
            else:
                found.append(row)
    return [
        summed(tuple(zip(by, key[: len(by)], strict=True)), groups[key]) for key in sorted(groups)
    ]


def summed(labels: tuple[tuple[str, str], ...], rows: Sequence[SpendRow]) -> SpendRow:
    """``rows`` (one currency) added up into one row labelled ``labels``."""
    requests = errors = input_tokens = output_tokens = cost = unpriced = 0
    gpu = Decimal(0)
    for r in rows:
        requests += r.requests
        errors += r.errors
        input_tokens += r.input_tokens
        output_tokens += r.output_tokens
        gpu += r.gpu_seconds
        cost += int(r.cost)  # plain ints: Micros' own + would run in Python for every row
        unpriced += r.unpriced_requests
    return SpendRow(
        labels,
        requests=requests,
        errors=errors,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        gpu_seconds=gpu,
        cost=Micros(cost),
        currency=rows[0].currency,
        unpriced_requests=unpriced,
    )


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
    read = within_data(ledger, window, tz)
    bounds = bucket_bounds(read, unit, tz) if unit else []
    where = SpanFilter(
        since=read.start, until=read.end, tenant=tenant, department=department, model=model
    )
    aggregates = ledger.spend(where, group, [start for start, _ in bounds])
    report = SpendReport(window=window, by=list(by))
    sortable = []
    for agg in aggregates:
        values = dict(zip(group, agg.keys, strict=True))
        if unit:
            values[unit] = bounds[agg.bucket][1]
        row = SpendRow(
            tuple((name, values[name]) for name in by),
            requests=agg.requests,
            errors=agg.errors,
            input_tokens=agg.input_tokens,
            output_tokens=agg.output_tokens,
            gpu_seconds=gpu_seconds(agg.gpu_ns),
            cost=Micros(agg.cost),
            currency=agg.currency,
            unpriced_requests=agg.unpriced_requests,
        )
        report.unpriced_requests += agg.unpriced_requests
        order = tuple(agg.bucket if name == unit else values[name] for name in by)
        sortable.append(((order, agg.currency), row))
    sortable.sort(key=lambda item: item[0])
    report.rows = [row for _, row in sortable]
    return report
