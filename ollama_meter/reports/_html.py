"""HTML: the dashboard page and the self-contained report and chargeback files.

One renderer for all three: Jinja2 templates (autoescaped; names from the
ledger are data, never markup) shipped in ``reports/templates``, charts from
:mod:`._charts`, one stylesheet. The pages load nothing from anywhere: CSS is
inline, charts are inline SVG, and the dashboard's one small script is inline
too, allowed by hash in :data:`CONTENT_SECURITY_POLICY`. Tables in the files
show each cell exactly as the CSV writes it; the UI rounds money to its currency's
minor unit (cents, whole yen, fils) with thousands separators and keeps the exact
amount in tooltips.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from importlib.resources import files
from itertools import zip_longest
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from ollama_meter._text import isolate
from ollama_meter.periods import TIME_UNITS
from ollama_meter.records import Micros, format_micros, minor_places
from ollama_meter.reports._chargeback import COLUMNS as CHARGEBACK_COLUMNS, Chargeback
from ollama_meter.reports._charts import (
    PALETTE_SIZE,
    WIDE,
    Bar,
    Chart,
    LegendItem,
    Segment,
    Series,
    bars,
    columns,
    distinct_classes,
)
from ollama_meter.reports._dashboard import (
    share,
)
from ollama_meter.reports._dashboard_budgets import shown_scope
from ollama_meter.reports._render import cell_text
from ollama_meter.reports._rows import SpendRow
from ollama_meter.reports._shown import minor_unit, money, shown_top
from ollama_meter.reports._spend import SpendReport, spend_axis


def num(value: int) -> str:
    return f"{value:,}"


def percent(value: Decimal | None) -> str:
    return "–" if value is None else f"{value:,f} %"


def rate(fraction: Decimal) -> str:
    """An error rate (a fraction such as ``0.0290``) as a percentage: ``2.9 %``."""
    return percent((fraction * 100).quantize(Decimal("0.1"), ROUND_HALF_EVEN))


def ms(amount: Decimal | None) -> str:
    """Milliseconds for people: ``0.8 ms``, ``12 ms``, ``1,204 ms``; a dash when unknown."""
    if amount is None:
        return "–"
    if amount < 10:
        return f"{amount.quantize(Decimal('0.1'), ROUND_HALF_EVEN)} ms"
    return f"{amount.quantize(Decimal(1), ROUND_HALF_EVEN):,} ms"


def to_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def cost_bar(
    label: str, amount: int, currency: str, href: str | None = None, *, shown: int | None = None
) -> Bar:
    """One bar of a spend chart: rounded at its end (``shown``, rounded with the bars beside
    it by :func:`rounded_parts`, so they add up to the total), exact in its tooltip."""
    exact = format_micros(amount)
    return Bar(
        label=label,
        segments=[Segment(to_decimal(amount), "accent", f"{label}: {exact} {currency}", exact)],
        text=money(amount if shown is None else shown, currency),
        href=href,
    )


CHART_ROWS = 25
"""Bars a chart of groups (a report's, a bill's) draws, the biggest; the rest are counted
under it ("and N more"), the table below has them all."""

SHOWN_SERIES = PALETTE_SIZE
"""How many series a stacked spend chart draws apart, the biggest; the rest are one ("and N
more"), so a ledger with a thousand departments still draws a readable chart and legend."""


def spend_series(
    name: str,
    css: str,
    by_x: Mapping[str, int],
    xs: Sequence[str],
    currency: str,
    href: str | None = None,
) -> Series:
    """One group's spend (micro-units per x) as a chart series, exact in each tooltip."""
    return Series(
        name,
        css,
        [to_decimal(by_x.get(x, 0)) for x in xs],
        [f"{name} · {x}: {format_micros(by_x.get(x, 0))} {currency}" for x in xs],
        [format_micros(by_x.get(x, 0)) for x in xs],
        href=href,
    )


def rest_of(
    groups: Sequence[Mapping[str, int]],
    what: str,
    xs: Sequence[str],
    currency: str,
    shown: int | None = None,
) -> tuple[Series, LegendItem]:
    """The groups a chart does not draw apart, as one series and its legend entry: per x, the
    exact sum of theirs; the legend shows ``shown`` (their amounts as :func:`rounded_parts`
    rounds them, added) when given."""
    by_x = {x: sum(group.get(x, 0) for group in groups) for x in xs}
    total = sum(sum(group.values()) for group in groups)
    series = spend_series(f"{len(groups):,} more {what}".rstrip(), "rest", by_x, xs, currency)
    item = LegendItem(
        f"and {len(groups):,} more",
        "rest",
        money(total if shown is None else shown, currency),
        f"{format_micros(total)} {currency}",
    )
    return series, item


@cache
def asset(name: str) -> str:
    return (files("ollama_meter.reports") / "templates" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@cache
def content_security_policy() -> str:
    """Nothing but this page's own inline style and script: no fetch, no font, no CDN."""
    return (
        "default-src 'none'; "
        f"style-src '{_sha256(asset('style.css'))}'; "
        f"script-src '{_sha256(asset('dash.js'))}'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


@cache
def file_security_policy() -> str:
    """The report and chargeback files' policy, in a ``<meta>`` (a file has no headers): their
    one inline style and nothing else, no script at all. Names in them are escaped; this is
    what keeps a file opened from a mail or a share inert should markup ever get through."""
    return (
        "default-src 'none'; "
        f"style-src '{_sha256(asset('style.css'))}'; "
        "img-src data:; form-action 'none'; base-uri 'none'"
    )


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ollama_meter.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=money,
        exact=format_micros,
        num=num,
        percent=percent,
        rate=rate,
        ms=ms,
        isolate=isolate,
        scope=shown_scope,
    )
    env.globals.update(css=asset("style.css"), file_policy=file_security_policy())
    return env


def render_template(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def short_label(label: str, unit: str) -> str:
    """An axis label: ``2026-11-03`` → ``3 Nov``, ``2026-W45`` → ``W45``, months unchanged."""
    if unit == "day":
        day = date.fromisoformat(label)
        return f"{day.day} {day:%b}"
    if unit == "week":
        return label.split("-", 1)[1]
    return label


def render_error_page(message: str, *, home: str) -> str:
    """What the dashboard shows for a bad period or filter, or a ledger it cannot read."""
    return render_template("error.html", message=message, home=home)


# ---------------------------------------------------------------------------- the files


def _total_row(
    columns: Sequence[str], keys: Sequence[str], total: Mapping[str, object]
) -> list[str]:
    """A totals line in CSV's formatting: ``total`` under the first key, sums elsewhere."""
    cells = []
    for index, name in enumerate(columns):
        if name in keys:
            cells.append("total" if index == 0 else "")
        else:
            cells.append(cell_text(total.get(name)))
    return cells


def render_spend_html(
    report: SpendReport, *, tz: ZoneInfo, zone: str, generated: datetime, title: str
) -> str:
    """``ometer report --format html``: the CSV's table, per-currency totals and charts, one file."""
    cols = report.columns
    keys = list(report.by)
    unit = next((name for name in report.by if name in TIME_UNITS), None)
    groups = [name for name in report.by if name not in TIME_UNITS]
    totals = report.totals()
    charts = []
    for total in totals:
        currency = total.currency
        rows = [r for r in report.rows if r.currency == currency]
        if unit:
            charts.append(_spend_over_time(report, rows, groups, unit, currency, tz))
        elif groups:
            by_cost = sorted(rows, key=lambda r: (-r.cost, _key(r, groups)))
            rounded, _ = shown_top([r.cost for r in by_cost], currency, CHART_ROWS)
            charts.append(
                bars(
                    f"Spend by {' / '.join(groups)} in {currency}",
                    [
                        cost_bar(_key(r, groups), r.cost, currency, shown=shown)
                        for r, shown in zip_longest(by_cost, rounded)  # not drawn past CHART_ROWS
                    ],
                    unit=currency,
                    least_step=minor_unit(currency),
                    width=WIDE,
                    limit=CHART_ROWS,
                )
            )
    return render_template(
        "report.html",
        title=title,
        subtitle=f"{report.window.label} · {zone}",
        generated=generated.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
        zone=zone,
        columns=cols,
        rows=[([cell_text(r.get(c)) for c in cols], r.unpriced_requests) for r in report.rows],
        numeric=[c not in keys and c != "currency" for c in cols],
        totals=[_total_row(cols, keys, t) for t in totals] if keys else [],
        summary=[(t.currency, t.cost, t.requests) for t in totals],
        charts=charts,
        unpriced=report.unpriced_requests,
        notes=[],
    )


def _key(row: SpendRow, groups: Sequence[str]) -> str:
    return " / ".join(isolate(row.label(g)) or "(none)" for g in groups) or "total"


def _spend_over_time(
    report: SpendReport,
    rows: list[SpendRow],
    groups: list[str],
    unit: str,
    currency: str,
    tz: ZoneInfo,
) -> Chart:
    xs = spend_axis(report, rows, unit, tz)
    # Keyed by the group's values, not the name shown: a call with no model and one whose
    # model is called '(none)' both show as '(none)', and were one series with one's amount.
    cells: dict[tuple[str, ...], dict[str, int]] = {}
    shown_as: dict[tuple[str, ...], str] = {}
    for row in rows:
        group = tuple(row.label(g) for g in groups)
        shown_as[group] = _key(row, groups)
        cells.setdefault(group, {})[row.label(unit)] = row.cost
    homes = {group: index for index, group in enumerate(sorted(cells))}
    groups_by_cost = sorted(cells, key=lambda group: (-sum(cells[group].values()), group))
    rounded, left = shown_top(
        [sum(cells[group].values()) for group in groups_by_cost], currency, SHOWN_SERIES
    )
    shown, rest = groups_by_cost[:SHOWN_SERIES], groups_by_cost[SHOWN_SERIES:]
    colours = dict(zip(shown, distinct_classes([homes[group] for group in shown]), strict=True))
    series = [
        spend_series(shown_as[group], colours[group], cells[group], xs, currency) for group in shown
    ]
    legend = [
        LegendItem(
            shown_as[group],
            colours[group],
            money(amount, currency),
            f"{format_micros(sum(cells[group].values()))} {currency}",
        )
        for group, amount in zip(shown, rounded, strict=True)
    ]
    if rest:
        folded, item = rest_of([cells[name] for name in rest], "", xs, currency, left)
        series.append(folded)
        legend.append(item)
    chart = columns(
        f"Spend per {unit} in {currency}",
        xs,
        series,
        unit=currency,
        least_step=minor_unit(currency),
        x_text=lambda x: short_label(x, unit),
        height=300,
        width=WIDE,
    )
    chart.legend = legend
    return chart


def render_chargeback_html(
    result: Chargeback, *, tz: ZoneInfo, zone: str, generated: datetime
) -> str:
    """``ometer chargeback --format html``: the CSV's rows, totals per currency, a chart."""
    cols = list(CHARGEBACK_COLUMNS)
    keys = ["month", "tenant", "department"]
    totals: dict[str, dict[str, object]] = {}
    for currency in sorted({row.currency for row in result.rows}):
        rows = [r for r in result.rows if r.currency == currency]
        totals[currency] = {
            "requests": sum(r.requests for r in rows),
            "input_tokens": sum(r.input_tokens for r in rows),
            "output_tokens": sum(r.output_tokens for r in rows),
            "gpu_seconds": sum((r.gpu_seconds for r in rows), Decimal(0)),
            "usage_cost": sum((r.usage_cost for r in rows), Micros(0)),
            "fixed_cost_share": sum(
                (r.fixed_cost_share for r in rows), Decimal(0).scaleb(-minor_places(currency))
            ),  # with the rows' places: 1000 JPY, not 1000.00
            "total_cost": sum((r.total_cost for r in rows), Micros(0)),
            "currency": currency,
        }
    charts = []
    for currency in sorted(totals):
        # The biggest bills first, the 25 biggest drawn (the table has every row): a bar per
        # department drew 5,000 departments as an SVG 140,000 px tall, 3.5 MB of the email.
        rows = sorted(
            (r for r in result.rows if r.currency == currency),
            key=lambda r: (-r.total_cost, r.tenant, r.department),
        )
        names = {id(r): f"{isolate(r.tenant)} / {isolate(r.department)}" for r in rows}
        kept, _ = shown_top([r.total_cost for r in rows], currency, CHART_ROWS)
        rounded = dict(zip(map(id, rows), kept, strict=False))
        charts.append(
            bars(
                f"Bill per tenant and department in {currency}",
                [
                    Bar(
                        label=names[id(r)],
                        segments=[
                            Segment(
                                to_decimal(r.usage_cost),
                                "accent",
                                f"{names[id(r)]} usage: {format_micros(r.usage_cost)} {currency}",
                                format_micros(r.usage_cost),
                                "usage",
                            ),
                            Segment(
                                r.fixed_cost_share,
                                "fixed",
                                f"{names[id(r)]} fixed-cost share: {r.fixed_cost_share} {currency}",
                                f"{r.fixed_cost_share}",
                                "fixed",
                            ),
                        ],
                        text=money(
                            rounded.get(id(r), r.total_cost), currency
                        ),  # past CHART_ROWS: not drawn
                    )
                    for r in rows
                ],
                unit=currency,
                least_step=minor_unit(currency),
                width=WIDE,
                limit=CHART_ROWS,
            )
        )
        charts[-1].legend = [
            LegendItem("usage", "accent"),
            LegendItem("fixed-cost share", "fixed"),
        ]
    notes = list(result.warnings)
    if result.capacity_ns:
        used = share(result.busy_ns, result.capacity_ns, 2)
        notes.append(
            f"GPU capacity used: {percent(used)} "
            f"({Decimal(result.busy_ns).scaleb(-9):f} s busy of {Decimal(result.capacity_ns).scaleb(-9):f} s)"
        )
    return render_template(
        "report.html",
        title="Chargeback",
        subtitle=f"{result.window.label} · {zone}",
        generated=generated.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
        zone=zone,
        columns=cols,
        rows=[([cell_text(r.get(c)) for c in cols], r.unpriced_requests) for r in result.rows],
        numeric=[c not in keys and c != "currency" for c in cols],
        totals=[_total_row(cols, keys, totals[c]) for c in sorted(totals)],
        summary=[(c, totals[c]["total_cost"], totals[c]["requests"]) for c in sorted(totals)],
        charts=charts,
        unpriced=sum(r.unpriced_requests for r in result.rows),
        notes=notes,
    )
