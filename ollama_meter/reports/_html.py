"""HTML: the dashboard page and the self-contained report and chargeback files.

One renderer for all three: Jinja2 templates (autoescaped; names from the
ledger are data, never markup) shipped in ``reports/templates``, charts from
:mod:`._charts`, one stylesheet. The pages load nothing from anywhere: CSS is
inline, charts are inline SVG, and the dashboard's one small script is inline
too, allowed by hash in :data:`CONTENT_SECURITY_POLICY`. Tables in the files
show each cell exactly as the CSV writes it; the UI rounds money to two
decimals with thousands separators and keeps the exact amount in tooltips.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import jinja2

from ollama_meter.budgets import BudgetStatus
from ollama_meter.periods import TIME_UNITS, bucket_bounds
from ollama_meter.pricing import format_micros
from ollama_meter.reports._chargeback import COLUMNS as CHARGEBACK_COLUMNS
from ollama_meter.reports._chargeback import Chargeback
from ollama_meter.reports._charts import (
    WIDE,
    Bar,
    Chart,
    Gauge,
    LegendItem,
    Segment,
    Series,
    bars,
    columns,
    gauge,
    lines,
    series_class,
)
from ollama_meter.reports._dashboard import (
    PERIOD_CHOICES,
    TOP,
    Dashboard,
    DepartmentDrill,
    budget_share,
    change,
    share,
)
from ollama_meter.reports._render import _cell
from ollama_meter.reports._spend import SpendReport

_CENT = Decimal("0.01")


def money(micros: int) -> str:
    """``1234567891`` → ``1,234.57``: what the UI shows, half a cent up (exact in tooltips)."""
    return f"{Decimal(micros).scaleb(-6).quantize(_CENT, ROUND_HALF_UP):,}"


def num(value: object) -> str:
    return f"{int(str(value)):,}"


def percent(value: Decimal | None) -> str:
    return "–" if value is None else f"{value:,f} %"


def rate(fraction: object) -> str:
    """An error rate (a fraction such as ``0.0290``) as a percentage: ``2.9 %``."""
    return percent((Decimal(str(fraction)) * 100).quantize(Decimal("0.1"), ROUND_HALF_EVEN))


def ms(value: object) -> str:
    """Milliseconds for people: ``0.8 ms``, ``12 ms``, ``1,204 ms``; a dash when unknown."""
    if value is None:
        return "–"
    amount = Decimal(str(value))
    if amount < 10:
        return f"{amount.quantize(Decimal('0.1'), ROUND_HALF_EVEN)} ms"
    return f"{amount.quantize(Decimal(1), ROUND_HALF_EVEN):,} ms"


def _to_decimal(micros: object) -> Decimal:
    return Decimal(int(str(micros))).scaleb(-6)


def cost_bar(label: str, micros: object, currency: str, href: str | None = None) -> Bar:
    """One bar of a spend chart: rounded at its end, exact in its tooltip."""
    amount = int(str(micros))
    exact = format_micros(amount)
    return Bar(
        label=label,
        segments=[Segment(_to_decimal(amount), "accent", f"{label}: {exact} {currency}", exact)],
        text=money(amount),
        href=href,
    )


@cache
def _asset(name: str) -> str:
    return (files("ollama_meter.reports") / "templates" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@cache
def content_security_policy() -> str:
    """Nothing but this page's own inline style and script: no fetch, no font, no CDN."""
    return (
        "default-src 'none'; "
        f"style-src '{_sha256(_asset('style.css'))}'; "
        f"script-src '{_sha256(_asset('dash.js'))}'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
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
    env.filters.update(money=money, exact=format_micros, num=num, percent=percent, rate=rate, ms=ms)
    env.globals.update(css=_asset("style.css"))
    return env


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def short_label(label: str, unit: str) -> str:
    """An axis label: ``2026-11-03`` → ``3 Nov``, ``2026-W45`` → ``W45``, months unchanged."""
    if unit == "day":
        day = date.fromisoformat(label)
        return f"{day.day} {day:%b}"
    if unit == "week":
        return label.split("-", 1)[1]
    return label


# ---------------------------------------------------------------------------- the dashboard


@dataclass(frozen=True, slots=True)
class Links:
    """Links back to the dashboard: the current query with some parameters changed.

    Empty values are dropped, so links stay short and shareable.
    """

    path: str
    params: Mapping[str, str]

    def at(self, path: str) -> Links:
        return Links(path, self.params)

    def href(self, **changes: str | None) -> str:
        merged = {**self.params, **changes}
        query = urlencode({k: v for k, v in merged.items() if v})
        return f"{self.path}?{query}" if query else self.path


@dataclass(frozen=True, slots=True)
class Card:
    key: str
    label: str
    value: str
    exact: str
    note: str = ""
    tone: str = ""
    tip: str = ""


@dataclass
class DepartmentPanel:
    name: str
    anchor: str
    css: str
    drill: DepartmentDrill
    share: Decimal | None
    chart: Chart
    filter_href: str


@dataclass
class CurrencyPanel:
    currency: str
    cost: int
    spend_chart: Chart
    model_chart: Chart
    top_models: list[dict[str, object]]
    top_users: list[dict[str, object]]
    departments: list[DepartmentPanel] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BudgetPanel:
    status: BudgetStatus
    used: Decimal
    projected: Decimal | None
    state: str
    tone: str
    note: str
    gauge: Gauge


def _budget_panel(status: BudgetStatus) -> BudgetPanel:
    used = budget_share(status)
    projected = share(status.projected, status.budget.limit)
    state = status.state
    tone = {"ok": "ok", "warning": "warning"}.get(state, "over")
    note = {
        "exhausted": "limit reached: calls are refused",
        "over": "over the limit (soft budget: alerts only)",
    }.get(state, "")
    if not note and projected is not None and projected > 100:
        note = "on pace to exceed the limit by period end"
    return BudgetPanel(
        status=status,
        used=used,
        projected=projected,
        state=state,
        tone=tone,
        note=note,
        gauge=gauge(used, projected, status.budget.thresholds),
    )


def _cards(d: Dashboard) -> list[Card]:
    counts = d.counts()
    before = d.previous_counts()
    cards = []
    for currency, total in zip(d.currencies, d.totals, strict=True):
        cost, earlier = int(str(total["cost"])), d.previous_cost(currency)
        delta = change(cost, earlier)
        cards.append(
            Card(
                key=f"spend-{currency}",
                label=f"Spend ({currency})",
                value=money(cost),
                exact=format_micros(cost),
                note=_change_note(delta, f"{money(earlier)} {currency}"),
                tip=f"{format_micros(cost)} {currency}; before: {format_micros(earlier)} {currency}",
            )
        )
    if not d.currencies:
        cards.append(Card("spend", "Spend", "0.00", "0.000000", "no calls in this period"))
    calls = counts["requests"]
    cards.append(
        Card(
            key="calls",
            label="Calls",
            value=num(calls),
            exact=str(calls),
            note=_change_note(change(calls, before["requests"]), num(before["requests"])),
        )
    )
    errors = share(counts["errors"], calls, 2)
    cards.append(
        Card(
            key="error-rate",
            label="Error rate",
            value=percent(errors),
            exact="" if errors is None else f"{errors:f}",
            note=f"{num(counts['errors'])} failed call(s)",
            tone="bad" if errors is not None and errors >= 5 else "",
        )
    )
    tokens = counts["input_tokens"] + counts["output_tokens"]
    cards.append(
        Card(
            key="tokens",
            label="Tokens",
            value=num(tokens),
            exact=str(tokens),
            note=f"{num(counts['input_tokens'])} in · {num(counts['output_tokens'])} out",
        )
    )
    unpriced = counts["unpriced_requests"]
    cards.append(
        Card(
            key="unpriced",
            label="Unpriced calls",
            value=num(unpriced),
            exact=str(unpriced),
            note="counted as 0: add a price rule" if unpriced else "every call has a price",
            tone="warning" if unpriced else "good",
        )
    )
    return cards


def _change_note(delta: Decimal | None, before: str) -> str:
    if delta is None:
        return "nothing in the previous period"
    arrow = "▲" if delta > 0 else "▼" if delta < 0 else "="
    return f"{arrow} {abs(delta):f} % vs {before}"


def _currency_panel(d: Dashboard, currency: str, links: Links) -> CurrencyPanel:
    colours = {name: series_class(i) for i, name in enumerate(d.options["department"])}
    departments = d.departments(currency)
    cost = sum(dept.cost for dept in departments)
    xs = d.buckets
    series = []
    panels = []
    for index, dept in enumerate(departments):
        name = dept.name
        css = colours.get(name, series_class(len(colours) + index))
        anchor = f"dept-{currency}-{index}"
        by_time = {str(r[d.unit]): int(str(r["cost"])) for r in dept.days}
        values = [_to_decimal(by_time.get(x, 0)) for x in xs]
        tips = [f"{name} · {x}: {format_micros(by_time.get(x, 0))} {currency}" for x in xs]
        exact = [format_micros(by_time.get(x, 0)) for x in xs]
        series.append(Series(name, css, values, tips, exact, href=f"#{anchor}"))
        alone = columns(
            f"{name}: spend per {d.unit}",
            xs,
            [Series(name, css, values, tips, exact)],
            unit=currency,
            x_text=lambda x: short_label(x, d.unit),
            height=180,
        )
        panels.append(
            DepartmentPanel(
                name=name,
                anchor=anchor,
                css=css,
                drill=dept,
                share=share(dept.cost, cost),
                chart=alone,
                filter_href=links.href(dept=name),
            )
        )
    spend_chart = columns(
        f"Spend per department per {d.unit} in {currency}",
        xs,
        series,
        unit=currency,
        x_text=lambda x: short_label(x, d.unit),
        height=300,
        width=WIDE,
    )
    spend_chart.legend = [
        LegendItem(
            name=p.name,
            css=p.css,
            value=money(p.drill.cost),
            tip=f"{format_micros(p.drill.cost)} {currency}",
            href=f"#{p.anchor}",
        )
        for p in panels
    ]
    models = d.by_cost(d.in_currency(d.spend.rollup(["model"]), currency), "model")
    users = d.by_cost(d.in_currency(d.users.rollup(["user"]), currency), "user")
    model_chart = bars(
        f"Spend by model in {currency}",
        [
            cost_bar(str(m["model"]), m["cost"], currency, links.href(model=str(m["model"])))
            for m in models[:TOP]
        ],
        unit=currency,
    )
    for row in (*models, *users):
        row["share"] = share(int(str(row["cost"])), cost)
    return CurrencyPanel(
        currency=currency,
        cost=cost,
        spend_chart=spend_chart,
        model_chart=model_chart,
        top_models=models[:TOP],
        top_users=users[:TOP],
        departments=panels,
    )


def _timing_charts(d: Dashboard) -> dict[str, Chart]:
    by_time = {str(r[d.unit]): r for r in d.timing_by_time.rows}
    xs = d.buckets

    def percentiles(label: str, column: str, css: str) -> Chart:
        series = []
        for p in ("p50", "p95"):
            values: list[Decimal | None] = []
            for x in xs:
                value = by_time.get(x, {}).get(f"{column}_{p}_ms")
                values.append(value if isinstance(value, Decimal) else None)
            tips = [
                f"{label} {p} · {x}: {'no data' if v is None else f'{v:f} ms'}"
                for x, v in zip(xs, values, strict=True)
            ]
            exact = ["" if v is None else f"{v:f}" for v in values]
            series.append(Series(f"{p}", css, values, tips, exact, dashed=p == "p95"))
        return lines(
            f"{label} per {d.unit}, p50 and p95",
            xs,
            series,
            unit="ms",
            x_text=lambda x: short_label(x, d.unit),
        )

    models = d.timing_by_model.rows

    def model_bars(label: str, unit: str, rows: list[tuple[str, Decimal, str, str]]) -> Chart:
        return bars(
            label,
            [
                Bar(name, [Segment(value, "accent", tip, f"{value:f}")], text)
                for name, value, text, tip in rows
            ],
            unit=unit,
        )

    speed = model_bars(
        "Output tokens per second by model (median)",
        "tok/s",
        [
            (str(r["model"]), v, f"{v:,f}", f"{r['model']}: {v:f} tokens/s")
            for r in models
            if isinstance(v := r["tokens_per_s"], Decimal)
        ],
    )
    cold = model_bars(
        "Cold model loads",
        "loads",
        [
            (
                str(r["model"]),
                Decimal(int(str(r["cold_loads"]))),
                f"{r['cold_loads']} ({r['cold_load_s']} s)",
                f"{r['model']}: {r['cold_loads']} cold load(s), {r['cold_load_s']} s loading",
            )
            for r in models
            if int(str(r["cold_loads"])) > 0
        ],
    )
    queue = model_bars(
        "Waiting inside Ollama, p95 by model",
        "ms",
        [
            (
                str(r["model"]),
                v,
                ms(v),
                f"{r['model']}: p50 {r['queue_p50_ms']} ms, p95 {v:f} ms",
            )
            for r in models
            if isinstance(v := r["queue_p95_ms"], Decimal)
        ],
    )
    failures = bars(
        "Failed calls by type",
        [
            Bar(
                label=f"{f.status} · {f.error_type}" if f.error_type else f.status,
                segments=[
                    Segment(
                        Decimal(f.requests),
                        "err",
                        f"{f.status} {f.error_type or ''}: {f.requests} call(s)",
                        str(f.requests),
                    )
                ],
                text=num(f.requests),
            )
            for f in d.failures
        ],
        unit="calls",
    )
    calls = d.requests_by_time()
    counts = columns(
        f"Calls and errors per {d.unit}",
        xs,
        [
            Series(
                "calls without error",
                "calls",
                [Decimal(calls[x]["requests"] - calls[x]["errors"]) for x in xs],
                [f"{x}: {calls[x]['requests']} call(s), {calls[x]['errors']} error(s)" for x in xs],
                [str(calls[x]["requests"] - calls[x]["errors"]) for x in xs],
            ),
            Series(
                "errors",
                "err",
                [Decimal(calls[x]["errors"]) for x in xs],
                [f"{x}: {calls[x]['errors']} error(s)" for x in xs],
                [str(calls[x]["errors"]) for x in xs],
            ),
        ],
        unit="calls",
        x_text=lambda x: short_label(x, d.unit),
    )
    counts.legend = [LegendItem("calls without error", "calls"), LegendItem("errors", "err")]
    return {
        "ttft": percentiles("Time to first token", "ttft", "ttft"),
        "latency": percentiles("Latency", "latency", "lat"),
        "speed": speed,
        "cold": cold,
        "queue": queue,
        "failures": failures,
        "calls": counts,
    }


def render_dashboard(d: Dashboard, *, links: Links, zone: str) -> str:
    """The dashboard page for ``d``; ``links`` carries the current URL's parameters."""
    counts = d.counts()
    unpriced_models = sorted(
        {str(r["model"]) for r in d.spend.rows if int(str(r["unpriced_requests"])) > 0}
    )
    query = d.query
    return _render(
        "dashboard.html",
        d=d,
        zone=zone,
        links=links,
        script=_asset("dash.js"),
        periods=PERIOD_CHOICES,
        period=("custom" if query.since and query.period == "month" else query.period),
        as_of=d.now.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M"),
        cards=_cards(d),
        counts=counts,
        unpriced_models=unpriced_models,
        panels=[_currency_panel(d, c, links) for c in d.currencies],
        budgets=[_budget_panel(b) for b in d.budgets],
        charts=_timing_charts(d),
        short=lambda x: short_label(x, d.unit),
    )


def render_error_page(message: str, *, home: str) -> str:
    """What the dashboard shows for a bad period or filter, or a ledger it cannot read."""
    return _render("error.html", message=message, home=home)


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
            cells.append(_cell(name, total.get(name)))
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
        currency = str(total["currency"])
        rows = [r for r in report.rows if r["currency"] == currency]
        if unit:
            charts.append(_spend_over_time(report, rows, groups, unit, currency, tz))
        elif groups:
            by_cost = sorted(rows, key=lambda r: (-int(str(r["cost"])), _key(r, groups)))
            charts.append(
                bars(
                    f"Spend by {' / '.join(groups)} in {currency}",
                    [cost_bar(_key(r, groups), r["cost"], currency) for r in by_cost[:25]],
                    unit=currency,
                    width=WIDE,
                )
            )
    return _render(
        "report.html",
        title=title,
        subtitle=f"{report.window.label} · {zone}",
        generated=generated.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
        zone=zone,
        columns=cols,
        rows=[([_cell(c, r.get(c)) for c in cols], r["unpriced_requests"]) for r in report.rows],
        numeric=[c not in keys and c != "currency" for c in cols],
        totals=[_total_row(cols, keys, t) for t in totals] if keys else [],
        summary=[
            (str(t["currency"]), int(str(t["cost"])), int(str(t["requests"]))) for t in totals
        ],
        charts=charts,
        unpriced=report.unpriced_requests,
        notes=[],
    )


def _key(row: Mapping[str, object], groups: Sequence[str]) -> str:
    return " / ".join(str(row[g]) or "(none)" for g in groups) or "total"


def _spend_over_time(
    report: SpendReport,
    rows: list[dict[str, object]],
    groups: list[str],
    unit: str,
    currency: str,
    tz: ZoneInfo,
) -> Chart:
    xs = [label for _, label in bucket_bounds(report.window, unit, tz)]
    if len(xs) > 400:  # a window from 1970: start where the calls do
        first = min((str(r[unit]) for r in rows), default=xs[-1])
        xs = xs[xs.index(first) :] if first in xs else xs[-400:]
    cells: dict[str, dict[str, int]] = {}
    for row in rows:
        cells.setdefault(_key(row, groups), {})[str(row[unit])] = int(str(row["cost"]))
    series = [
        Series(
            name,
            series_class(index),
            [_to_decimal(cells[name].get(x, 0)) for x in xs],
            [f"{name} · {x}: {format_micros(cells[name].get(x, 0))} {currency}" for x in xs],
            [format_micros(cells[name].get(x, 0)) for x in xs],
        )
        for index, name in enumerate(sorted(cells))
    ]
    series.sort(key=lambda s: (-sum(cells[s.name].values()), s.name))
    chart = columns(
        f"Spend per {unit} in {currency}",
        xs,
        series,
        unit=currency,
        x_text=lambda x: short_label(x, unit),
        height=300,
        width=WIDE,
    )
    chart.legend = [
        LegendItem(
            s.name,
            s.css,
            money(sum(cells[s.name].values())),
            f"{format_micros(sum(cells[s.name].values()))} {currency}",
        )
        for s in series
    ]
    return chart


def render_chargeback_html(
    result: Chargeback, *, tz: ZoneInfo, zone: str, generated: datetime
) -> str:
    """``ometer chargeback --format html``: the CSV's rows, totals per currency, a chart."""
    cols = list(CHARGEBACK_COLUMNS)
    keys = ["month", "tenant", "department"]
    totals: dict[str, dict[str, object]] = {}
    for row in result.rows:
        currency = str(row["currency"])
        total = totals.setdefault(
            currency,
            {
                "requests": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "gpu_seconds": Decimal(0),
                "usage_cost": 0,
                "fixed_cost_share": Decimal("0.00"),
                "total_cost": 0,
                "currency": currency,
            },
        )
        for name in ("requests", "input_tokens", "output_tokens", "usage_cost", "total_cost"):
            total[name] = int(str(total[name])) + int(str(row[name]))
        for name in ("gpu_seconds", "fixed_cost_share"):
            total[name] = Decimal(str(total[name])) + Decimal(str(row[name]))
    charts = []
    for currency in sorted(totals):
        rows = [r for r in result.rows if r["currency"] == currency]
        charts.append(
            bars(
                f"Bill per tenant and department in {currency}",
                [
                    Bar(
                        label=f"{r['tenant']} / {r['department']}",
                        segments=[
                            Segment(
                                _to_decimal(r["usage_cost"]),
                                "accent",
                                f"{r['tenant']}/{r['department']} usage: {format_micros(int(str(r['usage_cost'])))} {currency}",
                                format_micros(int(str(r["usage_cost"]))),
                                "usage",
                            ),
                            Segment(
                                Decimal(str(r["fixed_cost_share"])),
                                "fixed",
                                f"{r['tenant']}/{r['department']} fixed-cost share: {r['fixed_cost_share']} {currency}",
                                f"{r['fixed_cost_share']}",
                                "fixed",
                            ),
                        ],
                        text=money(int(str(r["total_cost"]))),
                    )
                    for r in rows
                ],
                unit=currency,
                width=WIDE,
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
    return _render(
        "report.html",
        title="Chargeback",
        subtitle=f"{result.window.label} · {zone}",
        generated=generated.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
        zone=zone,
        columns=cols,
        rows=[([_cell(c, r.get(c)) for c in cols], 0) for r in result.rows],
        numeric=[c not in keys and c != "currency" for c in cols],
        totals=[_total_row(cols, keys, totals[c]) for c in sorted(totals)],
        summary=[
            (c, int(str(totals[c]["total_cost"])), int(str(totals[c]["requests"])))
            for c in sorted(totals)
        ],
        charts=charts,
        unpriced=0,
        notes=notes,
    )
