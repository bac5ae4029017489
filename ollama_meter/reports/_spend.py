"""The spend report (``ometer report``): ledger aggregates → rows with exact sums."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from typing import TypeVar
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import (
    GROUPS,
    Ledger,
    Ranked,
    Ranking,
    SpanFilter,
    SpendSums,
    capped_note,
)
from ollama_meter.periods import TIME_UNITS, Bucket, Window, buckets_over, walk_buckets
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


def held_buckets(ledger: Ledger, window: Window, unit: str, tz: ZoneInfo) -> list[Bucket]:
    """The ``unit`` buckets of ``window`` over the ledger's days (months, by month) that hold
    calls, in order: those a call can be in, and every report row's.

    A bucket with no calls has no row. Walking the calendar from the first call to the last
    built 2.9 million day buckets (6 s, 1 GB) for ``--since 1970-01-01 --until 9998-12-31
    --by day`` over a call in 1970 and one in 9998; these are a few for each day of calls.
    """
    stretches = ledger.days_with_calls(window.start, window.end, months=unit == "month")
    return buckets_over(stretches, window, unit, tz)


AXIS_BUCKETS = 400
"""The most buckets a chart's time axis walks the calendar for."""


def spend_axis(report: SpendReport, rows: Sequence[SpendRow], unit: str, tz: ZoneInfo) -> list[str]:
    """The labels along a spend chart's time axis, in order.

    Every bucket of the window, 0 where there was no call, when it has at most 400; a longer
    window from the first bucket with calls to its end, if that is at most 400; beyond, the
    buckets with calls alone (calls in 1970 and in 9998 drew 2.9 million days, in 22 s).
    """
    window = report.window
    axis = list(islice(walk_buckets(window.start, window.end, unit, tz), AXIS_BUCKETS + 1))
    if len(axis) <= AXIS_BUCKETS:
        return [label for _, _, label in axis]
    called = {row.label(unit) for row in rows}
    held = [bucket for bucket in report.buckets if bucket[2] in called]
    if held:
        axis = list(islice(walk_buckets(held[0][0], window.end, unit, tz), AXIS_BUCKETS + 1))
        if len(axis) <= AXIS_BUCKETS:
            return [label for _, _, label in axis]
    return sorted(called)  # ISO labels: in time order


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
    buckets: list[Bucket] = field(default_factory=list, repr=False)
    """The time buckets built (see :func:`held_buckets`): each row's, and maybe a few empty."""
    _rollups: dict[tuple[str, ...], list[SpendRow]] = field(default_factory=dict, repr=False)
    """Rollups already summed, per ``by``: :func:`spend_report` sets ``rows`` once, before any."""

    @property
    def columns(self) -> list[str]:
        return [*self.by, *METRICS]

    def totals(self) -> list[SpendRow]:
        """One total row per currency (sums of different currencies are meaningless)."""
        return self.rollup([])

    def capped_note(self) -> str | None:
        """Which rows' cost is a lower bound (:attr:`SpendRow.capped`), said in a line; None
        when every figure is exact."""
        capped = [
            f"{' / '.join(value or '(none)' for _, value in r.labels) or 'the total'} ({r.currency})"
            for r in self.rows
            if r.capped
        ]
        if not capped:
            return None
        return capped_note(f"the spend of {', '.join(capped)}", "its cost")

    def rollup(self, by: Sequence[str]) -> list[SpendRow]:
        """The rows summed down to ``by`` (some of this report's columns, or of a report
        :meth:`beside` it), per currency.

        Ordered by the ``by`` values, then currency; a subtotal never mixes currencies.
        """
        key = tuple(by)
        cached = self._rollups.get(key)
        if cached is None:
            # Sums are exact and add up in any order: start from the fewest rows that have
            # every column asked (a rollup already made, else the report's own rows).
            finer = [rows for done, rows in self._rollups.items() if set(key) <= set(done)]
            if set(key) <= set(self.by):
                finer.append(self.rows)
            if not finer:
                raise KeyError(f"no rows of this report are by {', '.join(key)}")
            cached = self._rollups[key] = _rolled_up(min(finer, key=len), key)
        return cached

    def beside(self, other: SpendReport) -> SpendReport:
        """This report, its rollups also drawn from ``other``'s rows (the same window and
        filters, other columns): two reads the database summed, in place of one finer read
        summed here (by department and model, and by department and day, are 26,000 rows
        for 1,000 departments, where by all three are 100,000)."""
        assert other.window == self.window
        self._rollups.setdefault(tuple(other.by), other.rows)
        return self


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
    gpu, capped = Decimal(0), False
    for r in rows:
        capped = capped or r.capped
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
        capped=capped,
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
    where = {"tenant": tenant, "department": department, "model": model}
    return spend_reports(ledger, window, [by], tz=tz, **where)[0]


def spend_reports(
    ledger: Ledger,
    window: Window,
    bys: Sequence[Sequence[str]],
    *,
    tz: ZoneInfo,
    tenant: str | None = None,
    department: str | None = None,
    model: str | None = None,
) -> list[SpendReport]:
    """A :func:`spend_report` by each of ``bys``, read from one snapshot of the ledger, so
    that they add up alike (a call recorded meanwhile is in each or in none)."""
    where = {"tenant": tenant, "department": department, "model": model}
    return spend_and_top(ledger, window, bys, [], tz=tz, **where)[0]


T = TypeVar("T")

_READS = 3
"""Reads of the sums at most while days with calls are being added (an import's)."""


def with_held_buckets(
    ledger: Ledger,
    window: Window,
    units: Iterable[str],
    tz: ZoneInfo,
    read: Callable[[dict[str, list[Bucket]]], T],
) -> tuple[dict[str, list[Bucket]], T]:
    """``read`` of sums in the :func:`held_buckets` of each of ``units``, and those buckets.

    The buckets are read before the sums, not in their snapshot: a call recorded between
    the two reads in a day none held (a window's first call, a day's first) was summed into
    no bucket, or, where none was held, into one that was not there (IndexError on
    /api/dash). So they are read again after the sums, and the sums again while they moved:
    the same, every day the sums saw was held (days are only added, but by a prune, which
    keeps their rollups). A row whose bucket is not among them is in the next answer."""
    units = list(units)
    bounds = {unit: held_buckets(ledger, window, unit, tz) for unit in units}
    for attempt in range(_READS):
        result = read(bounds)
        if not units or attempt == _READS - 1:
            break
        again = {unit: held_buckets(ledger, window, unit, tz) for unit in units}
        if again == bounds:
            break
        bounds = again
    return bounds, result


def spend_and_top(
    ledger: Ledger,
    window: Window,
    bys: Sequence[Sequence[str]],
    rankings: Sequence[Ranking],
    *,
    tz: ZoneInfo,
    tenant: str | None = None,
    department: str | None = None,
    model: str | None = None,
) -> tuple[list[SpendReport], list[list[Ranked]]]:
    """:func:`spend_reports`, and the top lists of ``rankings`` (``Ledger.spends_ranked``)
    from the same snapshot: a department's users add up to its spend."""
    units = {unit: None for by in bys for unit in by if unit in TIME_UNITS}
    where = SpanFilter(
        since=window.start, until=window.end, tenant=tenant, department=department, model=model
    )
    plans = [(list(by), next((u for u in by if u in TIME_UNITS), None)) for by in bys]
    bounds, (found, ranked) = with_held_buckets(
        ledger,
        window,
        units,
        tz,
        lambda held: ledger.spends_ranked(
            where,
            [
                (
                    [name for name in by if name in GROUPS],
                    [(start, end) for start, end, _ in held[unit]] if unit else [],
                )
                for by, unit in plans
            ],
            rankings,
        ),
    )
    reports = [
        _report(window, by, unit, bounds[unit] if unit else [], aggregates)
        for (by, unit), aggregates in zip(plans, found, strict=True)
    ]
    return reports, ranked


def _report(
    window: Window,
    by: list[str],
    unit: str | None,
    bounds: list[Bucket],
    aggregates: Sequence[SpendSums],
) -> SpendReport:
    report = SpendReport(window=window, by=by, buckets=bounds)
    group = [name for name in by if name in GROUPS]
    # Where each column of ``by`` is in a sum's keys; the time unit: -1.
    at = [-1 if name == unit else group.index(name) for name in by]
    named = list(zip(by, at, strict=True))

    def order(agg: SpendSums) -> tuple[object, ...]:
        keys = agg.keys
        return (*(agg.bucket if i < 0 else keys[i] for i in at), agg.currency)

    # Sorted before the rows are made: each row's sort key lives only as long as the sort.
    # Fewer objects alive, less for the garbage collector to walk: it took about half of the
    # 10 µs a row cost (45,000 rows for the dashboard of 1,000 departments).
    rows = []
    for agg in sorted(aggregates, key=order):
        if unit and agg.bucket >= len(bounds):  # days still coming in: in the next answer
            continue
        keys = agg.keys
        rows.append(
            SpendRow(
                tuple((name, bounds[agg.bucket][2] if i < 0 else keys[i]) for name, i in named),
                requests=agg.requests,
                errors=agg.errors,
                input_tokens=agg.input_tokens,
                output_tokens=agg.output_tokens,
                gpu_seconds=gpu_seconds(agg.gpu_ns),
                cost=Micros(agg.cost),
                currency=agg.currency,
                unpriced_requests=agg.unpriced_requests,
                capped=agg.capped,
            )
        )
        report.unpriced_requests += agg.unpriced_requests
    report.rows = rows
    return report
