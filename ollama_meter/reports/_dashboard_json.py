"""``/api/dash``: a :class:`~ollama_meter.reports._dashboard.Dashboard` as JSON.

Exact money as decimal strings, each next to its currency. Rows per department and
per user carry their ``tenant``: a name alone is not a department or a user, since
two tenants may both have a ``research`` or an ``alice``. Each list names its biggest
(:data:`LISTED`, :data:`TOP` within a department) per currency and ends with one row for
the others: their names null, ``others`` how many it folds, its figures their exact sums, so
every list adds up to its currency's spend and the answer stays an answer however many
names the window holds (1,000 departments of 20 users each made 10 MB of every row).
Builds data; reads nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

from ollama_meter._urls import quoted
from ollama_meter.budgets import BudgetStatus
from ollama_meter.ledger import SpanFilter
from ollama_meter.records import format_micros
from ollama_meter.reports._dashboard import LISTED, TOP, budget_share, change, share
from ollama_meter.reports._render import iso_utc
from ollama_meter.reports._rows import SPEND_FIGURES, PerfRow, SpendRow
from ollama_meter.reports._top import CostRow, Listed

if TYPE_CHECKING:
    from ollama_meter.reports._dashboard import Dashboard


def dashboard_json(d: Dashboard, *, listed: int = LISTED, top: int = TOP) -> dict[str, Any]:
    """The dashboard's figures for ``/api/dash``: ``listed`` departments and models per
    currency, ``top`` users (and models and users within a department), then the others.
    Users: at most the report's own top (``dashboard_report(top=...)``)."""
    unit = d.unit
    counts = d.counts()
    previous = d.previous_counts()
    rate = share(counts["errors"], counts["requests"], 2)
    return {
        "period": {
            "query": d.query.selected,
            "label": d.window.label,
            "start": iso_utc(d.window.start),
            "end": iso_utc(d.window.end),
            "unit": unit,
            "previous": {
                "label": d.previous.label,
                "start": iso_utc(d.previous.start),
                "end": iso_utc(d.previous.end),
                **previous,
            },
        },
        "filters": d.query.filters(),
        "currencies": d.currencies,
        "summary": {
            **counts,
            "error_rate": _text(None if rate is None else rate.scaleb(-2)),  # as perf has it
        },
        "spend": [
            {
                "currency": currency,
                "cost": format_micros(total.cost),
                "previous_cost": format_micros(d.previous_cost(currency)),
                "change_percent": _text(change(total.cost, d.previous_cost(currency))),
                "requests": total.requests,
                "unpriced_requests": total.unpriced_requests,
                "capped": total.capped,
            }
            for currency, total in zip(d.currencies, d.totals, strict=True)
        ],
        f"spend_by_department_by_{unit}": [
            row for currency in d.currencies for row in _series(d, currency, listed)
        ],
        f"requests_by_{unit}": [
            {unit: label, "requests": r["requests"], "errors": r["errors"]}
            for label, r in d.requests_by_time().items()
        ],
        "models": [
            row
            for currency in d.currencies
            for row in _folded(
                d.by_cost(d.in_currency(d.spend.rollup(["model"]), currency), "model"),
                ["model", "input_tokens", "output_tokens", "unpriced_requests"],
                listed,
            )
        ],
        "top_users": [
            row
            for currency in d.currencies
            for row in _listed(d.top_users(currency).cut(top), ["tenant", "user"])
        ],
        "departments": [
            row for currency in d.currencies for row in _departments(d, currency, listed, top)
        ],
        "budgets": [budget_json(b) for b in d.budgets],
        "warnings": [
            *([typo] if (typo := unmatched_note(d)) else []),
            *([note] if (note := d.spend.capped_note()) else []),
            *(b.problem for b in d.unreadable_budgets),
        ],
        f"timing_by_{unit}": [_plain(r) for r in d.timing_by_time.rows],
        "timing_by_model": _timings(d.timing_by_model.rows, listed),
        "failures": [
            {"status": f.status, "error_type": f.error_type, "requests": f.requests}
            for f in d.failures
        ],
    }


def unmatched_note(d: Dashboard, show: Callable[[str], str] = quoted) -> str:
    """The filters that name what no call in the window has, each with the names nearest it
    (as ``ometer report`` notes them); "" when every one is known. A typo (``acme ``, in the
    URL or the filter field past 500 names) showed a dashboard of nothing, saying nothing.
    ``show``: how a name is written. A key's own tenant and department are not a filter it
    typed: its empty month is no typo."""
    said = []
    q = d.query
    stored = SpanFilter(tenant=q.tenant, department=q.department, model=q.model)  # as matched
    for column, value in (("tenant", q.tenant), ("department", q.department), ("model", q.model)):
        known = d.options[column]
        if value is None or getattr(stored, column) in known:
            continue
        if q.scope is not None and column != "model":
            continue
        close = _near(value, known)
        hint = f" (did you mean {' or '.join(map(show, close))}?)" if close else ""
        said.append(f"no call in {d.window.label} has {column} {show(value)}{hint}")
    return "; ".join(said)


NEAR_AMONG = 2_000
"""The most names a filter's typo is compared with letter by letter: among 40,000 alike
names that took 3 s of CPU for each page drawn. Past it, only the names it matches but for
case and blanks around it are offered."""


def _near(value: str, known: Sequence[str]) -> list[str]:
    folded = value.strip().casefold()
    alike = [name for name in known if name.strip().casefold() == folded][:3]
    return alike or ([] if len(known) > NEAR_AMONG else get_close_matches(value, known, n=3))


def budget_json(status: BudgetStatus) -> dict[str, Any]:
    budget = status.budget
    return {
        "id": budget.id,
        "scope": budget.scope(status.tenant),
        "period": budget.period,
        "period_label": status.window.label,
        "currency": budget.currency,
        "hard": budget.hard,
        "spent": format_micros(status.spent),
        "held": format_micros(status.held),
        "limit": format_micros(budget.limit),
        "percent": _text(budget_share(status)),
        "projected": format_micros(status.projected),
        "projected_percent": _text(share(status.projected, budget.limit)),
        "state": status.state,
        "uncounted": {currency: format_micros(m) for currency, m in status.uncounted},
        "capped": status.capped,
    }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


def _plain(row: PerfRow) -> dict[str, object]:
    return {key: _text(v) if isinstance(v, Decimal) else v for key, v in row.items()}


def _money_rows(rows: Sequence[SpendRow | CostRow], keys: list[str]) -> list[dict[str, object]]:
    """Rows for JSON: ``keys``, then calls, errors, the exact cost and its currency."""
    return [
        {
            **{key: row[key] for key in keys},
            "requests": row.requests,
            "errors": row.errors,
            "cost": format_micros(row.cost),
            "currency": row.currency,
        }
        for row in rows
    ]


def _folded(rows: Sequence[SpendRow], keys: list[str], most: int) -> list[dict[str, object]]:
    """The first ``most`` of ``rows`` (one currency's, in order), then the others as one row."""
    shown = _money_rows(list(rows[:most]), keys)
    if rest := rows[most:]:
        shown.append({**_summed(rest, keys), "others": len(rest)})
    return shown


def _listed(listed: Listed, keys: list[str]) -> list[dict[str, object]]:
    """A top list the ledger ranked (:meth:`Listed.cut` to those shown): its rows, then the
    others as one, as :func:`_folded` shows them."""
    shown = _money_rows(listed.rows, keys)
    if (rest := listed.rest) is not None:
        shown.append({**dict.fromkeys(keys), **_money_rows([rest], [])[0], "others": listed.others})
    return shown


def _summed(rows: Sequence[SpendRow], keys: list[str], **labels: str) -> dict[str, object]:
    """``rows`` (one currency's) as one: the figures of ``keys`` and the money summed exactly,
    the names null but ``labels``."""
    figures = ("requests", "errors", *(key for key in keys if key in SPEND_FIGURES))
    return {
        **{key: labels.get(key) for key in keys},
        **{key: sum(int(row[key]) for row in rows) for key in figures},  # type: ignore[call-overload]
        "cost": format_micros(sum(row.cost for row in rows)),
        "currency": rows[0].currency,
    }


def _by_bucket(d: Dashboard, rows: Sequence[SpendRow], keys: list[str]) -> list[dict[str, object]]:
    """``rows`` summed per time bucket, in time order, with how many rows each one sums."""
    per: dict[str, list[SpendRow]] = defaultdict(list)
    for row in rows:
        per[row.label(d.unit)].append(row)
    return [
        {**_summed(per[label], keys, **{d.unit: label}), "others": len(per[label])}
        for label in d.buckets
        if label in per
    ]


def _departments(d: Dashboard, currency: str, listed: int, top: int) -> list[dict[str, Any]]:
    """The ``listed`` biggest departments with their models and users (``top`` of each, then
    their others) and their days; then the others, with their sums per day."""
    drills = d.departments(currency)
    shown: list[dict[str, Any]] = [
        {
            **_money_rows([dept.row], ["tenant", "department"])[0],
            "models": _folded(dept.models, ["model"], top),
            "users": _listed(dept.users.cut(top), ["user"]),
            d.unit: _money_rows(dept.days, [d.unit]),
        }
        for dept in drills[:listed]
    ]
    if rest := drills[listed:]:
        days = [
            {key: value for key, value in row.items() if key != "others"}
            for row in _by_bucket(d, [day for dept in rest for day in dept.days], [d.unit])
        ]
        rows = [dept.row for dept in rest]
        shown.append({**_summed(rows, ["tenant", "department"]), "others": len(rest), d.unit: days})
    return shown


def _series(d: Dashboard, currency: str, listed: int) -> list[dict[str, object]]:
    """Spend per department and time bucket: the ``listed`` biggest departments' (those
    ``departments`` lists), then the others' sum in each bucket."""
    keys = ["tenant", "department", d.unit]
    kept = {(dept.tenant, dept.name) for dept in d.departments(currency)[:listed]}
    mine: list[SpendRow] = []
    rest: list[SpendRow] = []
    for row in d.in_currency(d.spend.rollup(keys), currency):
        (mine if (row.label("tenant"), row.label("department")) in kept else rest).append(row)
    return _money_rows(mine, keys) + _by_bucket(d, rest, ["tenant", "department", d.unit])


def _timings(rows: Sequence[PerfRow], listed: int) -> list[dict[str, object]]:
    """The ``listed`` models with the most calls, then the others' calls and errors (timings
    of several models are not a sum: ``ometer perf --by model`` has each one's)."""
    ranked = sorted(rows, key=lambda r: (-r.requests, r.label("model")))
    shown = [_plain(r) for r in ranked[:listed]]
    if rest := ranked[listed:]:
        shown.append(
            {
                "model": None,
                "others": len(rest),
                "requests": sum(r.requests for r in rest),
                "errors": sum(r.errors for r in rest),
            }
        )
    return shown
