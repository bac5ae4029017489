"""The dashboard page: cards, per-currency panels, budget gauges and timing charts.

Built from a :class:`~ollama_meter.reports._dashboard.Dashboard` (the numbers)
and rendered with the HTML module's templates and filters; the page loads
nothing from anywhere (see :mod:`._html`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from ollama_meter.budgets import BudgetStatus
from ollama_meter.records import format_micros
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
from ollama_meter.reports._html import (
    asset,
    cost_bar,
    money,
    ms,
    num,
    percent,
    render_template,
    short_label,
    to_decimal,
)
from ollama_meter.reports._rows import SpendRow


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
    top_models: list[tuple[SpendRow, Decimal | None]]
    """The biggest models in this currency, each with its share of the spend."""
    top_users: list[tuple[SpendRow, Decimal | None]]
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


def _count_card(key: str, label: str, count: int, note: str, tone: str = "") -> Card:
    """A card that shows a count: grouped digits, the plain number as its exact value."""
    return Card(key, label, num(count), str(count), note, tone)


def _cards(d: Dashboard) -> list[Card]:
    counts = d.counts()
    before = d.previous_counts()
    cards = []
    for currency, total in zip(d.currencies, d.totals, strict=True):
        cost, earlier = total.cost, d.previous_cost(currency)
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
    previous = before["requests"]
    cards.append(
        _count_card("calls", "Calls", calls, _change_note(change(calls, previous), num(previous)))
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
    split = f"{num(counts['input_tokens'])} in · {num(counts['output_tokens'])} out"
    cards.append(_count_card("tokens", "Tokens", tokens, split))
    unpriced = counts["unpriced_requests"]
    note, tone = (
        ("counted as 0: add a price rule", "warning")
        if unpriced
        else ("every call has a price", "good")
    )
    cards.append(_count_card("unpriced", "Unpriced calls", unpriced, note, tone))
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
        by_time = {r.label(d.unit): r.cost for r in dept.days}
        values = [to_decimal(by_time.get(x, 0)) for x in xs]
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
            cost_bar(m.label("model"), m.cost, currency, links.href(model=m.label("model")))
            for m in models[:TOP]
        ],
        unit=currency,
    )
    return CurrencyPanel(
        currency=currency,
        cost=cost,
        spend_chart=spend_chart,
        model_chart=model_chart,
        top_models=[(m, share(m.cost, cost)) for m in models[:TOP]],
        top_users=[(u, share(u.cost, cost)) for u in users[:TOP]],
        departments=panels,
    )


def _timing_charts(d: Dashboard) -> dict[str, Chart]:
    by_time = {r.label(d.unit): r for r in d.timing_by_time.rows}
    xs = d.buckets

    def percentiles(label: str, column: str, css: str) -> Chart:
        series = []
        for p in ("p50", "p95"):
            values: list[Decimal | None] = []
            for x in xs:
                row = by_time.get(x)
                value = None if row is None else row.get(f"{column}_{p}_ms")
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
            (r.label("model"), v, f"{v:,f}", f"{r.label('model')}: {v:f} tokens/s")
            for r in models
            if (v := r.tokens_per_s) is not None
        ],
    )
    cold = model_bars(
        "Cold model loads",
        "loads",
        [
            (
                r.label("model"),
                Decimal(r.cold_loads),
                f"{r.cold_loads} ({r.cold_load_s} s)",
                f"{r.label('model')}: {r.cold_loads} cold load(s), {r.cold_load_s} s loading",
            )
            for r in models
            if r.cold_loads > 0
        ],
    )
    queue = model_bars(
        "Waiting inside Ollama, p95 by model",
        "ms",
        [
            (
                r.label("model"),
                v,
                ms(v),
                f"{r.label('model')}: p50 {r.queue_p50_ms} ms, p95 {v:f} ms",
            )
            for r in models
            if (v := r.queue_p95_ms) is not None
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
    unpriced_models = sorted({r.label("model") for r in d.spend.rows if r.unpriced_requests > 0})
    query = d.query
    return render_template(
        "dashboard.html",
        d=d,
        zone=zone,
        links=links,
        script=asset("dash.js"),
        periods=PERIOD_CHOICES,
        period=query.selected,
        as_of=d.now.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M"),
        cards=_cards(d),
        counts=counts,
        unpriced_models=unpriced_models,
        panels=[_currency_panel(d, c, links) for c in d.currencies],
        budgets=[_budget_panel(b) for b in d.budgets],
        charts=_timing_charts(d),
        short=lambda x: short_label(x, d.unit),
    )
