"""The dashboard page: cards, per-currency panels and budget gauges.

Built from a :class:`~ollama_meter.reports._dashboard.Dashboard` (the numbers)
and rendered with the HTML module's templates and filters, with the timing charts of
:mod:`._dashboard_timing` and the gauges of :mod:`._dashboard_budgets`; the page loads nothing
from anywhere (see :mod:`._html`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import zip_longest
from typing import TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from ollama_meter._text import isolate
from ollama_meter._urls import quoted
from ollama_meter.records import format_micros
from ollama_meter.reports._charts import (
    WIDE,
    Chart,
    LegendItem,
    bars,
    columns,
    distinct_classes,
    series_class,
)
from ollama_meter.reports._dashboard import (
    PERIOD_CHOICES,
    TOP,
    Dashboard,
    DepartmentDrill,
    change,
    share,
)
from ollama_meter.reports._dashboard_budgets import SHOWN_BUDGETS, budget_panels
from ollama_meter.reports._dashboard_json import unmatched_note
from ollama_meter.reports._dashboard_timing import timing_charts
from ollama_meter.reports._html import (
    SHOWN_SERIES,
    asset,
    cost_bar,
    num,
    percent,
    render_template,
    rest_of,
    short_label,
    spend_series,
)
from ollama_meter.reports._rows import SpendRow
from ollama_meter.reports._shown import minor_unit, money, shown_top
from ollama_meter.reports._top import CostRow, Listed

SHOWN_DRILLS = 25
"""How many departments (the biggest) get a drill-down panel on the page; the others are one
line that points at the Department filter, which gives any of them its panel."""
_T = TypeVar("_T")


FORM_PERIODS = {
    ("" if value == "month" else value): label for value, label in PERIOD_CHOICES.items()
}
"""The selector's choices as the page's form sends them: this month, the default, as no period,
so dates typed in with the selector left there (no script to switch it to ``custom``) ask for
their range, while ``period=month`` with dates in a URL is the conflict it is (a 400)."""


SHOWN_OPTIONS = 500
"""How many names a filter lists. Past these it is a text field that takes any name and
suggests these: every model asked for was an option (20,000 made-up names, megabytes of form)."""


def top(rows: Sequence[_T], limit: int = TOP) -> tuple[list[_T], int]:
    """The first ``limit`` of ``rows`` (already in order), and how many more there are: what
    every list on the page shows, so no name in the ledger can make the page grow."""
    return list(rows[:limit]), max(len(rows) - limit, 0)


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
    label: str
    """The name as shown: with its tenant when the page shows several (see :func:`named`)."""
    tenant: str | None
    """The department's tenant when the page shows several, else None (and no attribute)."""
    anchor: str
    css: str
    drill: DepartmentDrill
    share: Decimal | None
    chart: Chart
    filter_href: str
    shown: int = 0
    """Its cost as the page shows it: rounded with the other departments' (``rounded_parts``)."""
    models: list[tuple[SpendRow, int]] = field(default_factory=list)
    """Its biggest models (:data:`TOP`), each with its cost as shown (adding up to ``shown``
    with the others); ``more_models`` the others, counted."""
    users: list[tuple[CostRow, int]] = field(default_factory=list)
    more_models: int = 0
    more_users: int = 0


@dataclass
class CurrencyPanel:
    currency: str
    cost: int
    spend_chart: Chart
    model_chart: Chart
    top_models: list[tuple[SpendRow, Decimal | None, int]]
    """The biggest models in this currency, each with its share of the spend and its cost as
    shown (as its bar in the chart)."""
    top_users: list[tuple[CostRow, str, Decimal | None, int]]
    """The biggest users in this currency, each with its label, its share of the spend and its
    cost as shown."""
    departments: list[DepartmentPanel] = field(default_factory=list)
    more_departments: int = 0
    """Departments with no panel of their own (past :data:`SHOWN_DRILLS`)."""
    more_departments_cost: int = 0
    more_departments_shown: int = 0
    """``more_departments_cost`` as shown: the sum of its departments' rounded costs."""
    more_models: int = 0
    more_users: int = 0


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
                value=money(cost, currency),
                exact=format_micros(cost),
                note=_change_note(delta, f"{money(earlier, currency)} {currency}"),
                tip=f"{format_micros(cost)} {currency}; before: {format_micros(earlier)} {currency}",
            )
        )
    if not d.currencies:
        cards.append(Card("spend", "Spend", "0", "0.000000", "no calls in this period"))
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


def named(name: str, tenant: str | None) -> str:
    """A department or user as the page shows it: ``research (globex)`` when ``tenant`` is
    given, which it is whenever the page shows more than one tenant."""
    return isolate(name) if tenant is None else f"{isolate(name)} ({isolate(tenant)})"


def _currency_panel(d: Dashboard, currency: str, links: Links) -> CurrencyPanel:
    departments = d.departments(currency)
    homes = {key: i for i, key in enumerate(d.department_keys)}
    home = [
        homes.get((dept.name, dept.tenant), len(homes) + i) for i, dept in enumerate(departments)
    ]
    # The departments stacked in one chart each get their own colour; the others keep theirs.
    stacked = distinct_classes(home[:SHOWN_SERIES])
    cost = sum(dept.cost for dept in departments)
    # Rounded together, the departments drilled into and the others as one, so what the page
    # shows of them adds up to the spend card, each within a minor unit of its exact amount.
    rounded, rounded_others = shown_top([dept.cost for dept in departments], currency, SHOWN_DRILLS)
    xs = d.buckets
    # Several tenants: a department is named with its tenant, and its link filters to it.
    several = d.several_tenants
    series = []
    panels = []
    for index, dept in enumerate(departments[:SHOWN_DRILLS]):
        tenant = dept.tenant if several else None
        name = named(dept.name, tenant)
        css = stacked[index] if index < SHOWN_SERIES else series_class(home[index])
        anchor = f"dept-{currency}-{index}"
        by_time = {r.label(d.unit): r.cost for r in dept.days}
        if index < SHOWN_SERIES:
            series.append(spend_series(name, css, by_time, xs, currency, href=f"#{anchor}"))
        alone = columns(
            f"{name}: spend per {d.unit}",
            xs,
            [spend_series(name, css, by_time, xs, currency)],
            unit=currency,
            least_step=minor_unit(currency),
            x_text=lambda x: short_label(x, d.unit),
            height=180,
        )
        # Its models and its users each add up to its amount as shown.
        its_models, more_models = _shown_rows(dept.models, currency, rounded[index])
        its_users, more_users = _shown_listed(dept.users.cut(TOP), currency, rounded[index])
        panels.append(
            DepartmentPanel(
                name=dept.name,
                label=name,
                tenant=tenant,
                anchor=anchor,
                css=css,
                drill=dept,
                share=share(dept.cost, cost),
                chart=alone,
                shown=rounded[index],
                filter_href=(
                    links.href(tenant=tenant, dept=dept.name)
                    if tenant is not None
                    else links.href(dept=dept.name)
                ),
                models=its_models,
                users=its_users,
                more_models=more_models,
                more_users=more_users,
            )
        )
    folded = departments[SHOWN_SERIES:]
    rest = rest_of(
        [{r.label(d.unit): r.cost for r in dept.days} for dept in folded],
        "departments",
        xs,
        currency,
        sum(rounded[SHOWN_SERIES:]) + rounded_others,  # (SHOWN_SERIES < SHOWN_DRILLS)
    )
    if folded:
        series.append(rest[0])
    spend_chart = columns(
        f"Spend per department per {d.unit} in {currency}",
        xs,
        series,
        unit=currency,
        least_step=minor_unit(currency),
        x_text=lambda x: short_label(x, d.unit),
        height=300,
        width=WIDE,
    )
    spend_chart.legend = [
        LegendItem(
            name=p.label,
            css=p.css,
            value=money(p.shown, currency),
            tip=f"{format_micros(p.drill.cost)} {currency}",
            href=f"#{p.anchor}",
        )
        for p in panels[:SHOWN_SERIES]
    ] + ([rest[1]] if folded else [])
    models = d.by_cost(d.in_currency(d.spend.rollup(["model"]), currency), "model")
    shown_models, _ = shown_top([m.cost for m in models], currency, TOP)  # add up to the card
    users = d.top_users(currency).cut(TOP)
    shown_users, _ = shown_top(users.costs(), currency, len(users.rows))
    model_chart = bars(
        f"Spend by model in {currency}",
        [
            cost_bar(
                isolate(m.label("model")),
                m.cost,
                currency,
                links.href(model=m.label("model")),
                shown=shown,
            )
            for m, shown in zip_longest(models, shown_models)  # not drawn past TOP
        ],
        unit=currency,
        least_step=minor_unit(currency),
        limit=TOP,
    )
    return CurrencyPanel(
        currency=currency,
        cost=cost,
        spend_chart=spend_chart,
        model_chart=model_chart,
        top_models=[
            (m, share(m.cost, cost), shown)
            for m, shown in zip(models[:TOP], shown_models, strict=True)
        ],
        top_users=[
            (
                u,
                _user_label(u.label("user"), u.label("tenant") if several else None),
                share(u.cost, cost),
                shown,
            )
            for u, shown in zip(users.rows, shown_users, strict=True)
        ],
        departments=panels,
        more_departments=len(departments) - len(panels),
        more_departments_cost=sum(dept.cost for dept in departments[SHOWN_DRILLS:]),
        more_departments_shown=rounded_others,
        more_models=max(len(models) - TOP, 0),
        more_users=users.others,
    )


def _shown_rows(
    rows: Sequence[SpendRow], currency: str, total: int
) -> tuple[list[tuple[SpendRow, int]], int]:
    """The first :data:`TOP` of ``rows``, each with its cost as shown, and how many more: shown
    with the others as one, adding up to ``total`` (their sum as the page shows it)."""
    kept, more = top(rows)
    shown, _ = shown_top([r.cost for r in rows], currency, TOP, total)
    return list(zip(kept, shown, strict=True)), more


def _shown_listed(
    users: Listed, currency: str, total: int
) -> tuple[list[tuple[CostRow, int]], int]:
    """:func:`_shown_rows` of a top list the ledger ranked (cut to :data:`TOP`)."""
    shown, _ = shown_top(users.costs(), currency, len(users.rows), total)
    return list(zip(users.rows, shown, strict=True)), users.others


def _user_label(user: str, tenant: str | None) -> str:
    if not user:
        return "(no user)" if tenant is None else f"(no user, {isolate(tenant)})"
    return named(user, tenant)


def render_dashboard(d: Dashboard, *, links: Links, zone: str) -> str:
    """The dashboard page for ``d``; ``links`` carries the current URL's parameters."""
    counts = d.counts()
    unpriced: dict[str, int] = {}
    for row in d.spend.rows:
        if row.unpriced_requests > 0:
            model = row.label("model")
            unpriced[model] = unpriced.get(model, 0) + row.unpriced_requests
    # The models with the most unpriced calls: a ledger of 5,000 unpriced models wrote every
    # one into the banner (1 MB of it).
    unpriced_models, more_unpriced = top(sorted(unpriced, key=lambda m: (-unpriced[m], m)))
    budgets, more_budgets = budget_panels(d.budgets)
    unreadable_budgets = d.unreadable_budgets[:SHOWN_BUDGETS]  # each one's warning is in /api/dash
    more_budgets += len(d.unreadable_budgets) - len(unreadable_budgets)
    query = d.query
    by_calls = sorted(d.timing_by_model.rows, key=lambda r: (-r.requests, r.label("model")))
    return render_template(
        "dashboard.html",
        d=d,
        zone=zone,
        links=links,
        script=asset("dash.js"),
        periods=FORM_PERIODS,
        period="" if query.selected == "month" else query.selected,
        as_of=d.now.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M"),
        cards=_cards(d),
        capped_note=d.spend.capped_note(),
        unmatched_note=unmatched_note(d, lambda name: isolate(quoted(name))),
        counts=counts,
        unpriced_models=[isolate(model) for model in unpriced_models],
        more_unpriced_models=more_unpriced,
        panels=[_currency_panel(d, c, links) for c in d.currencies],
        several_tenants=d.several_tenants,
        budgets=budgets,
        unreadable_budgets=unreadable_budgets,
        more_budgets=more_budgets,
        charts=timing_charts(d),
        timing_models=by_calls[:TOP],
        more_timing_models=len(by_calls[TOP:]),
        short=lambda x: short_label(x, d.unit),
        shown_options=SHOWN_OPTIONS,
    )
