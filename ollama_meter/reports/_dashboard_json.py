"""``/api/dash``: a :class:`~ollama_meter.reports._dashboard.Dashboard` as JSON.

Exact money as decimal strings, each next to its currency. Rows per department and
per user carry their ``tenant``: a name alone is not a department or a user, since
two tenants may both have a ``research`` or an ``alice``. Builds data; reads nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ollama_meter.budgets import BudgetStatus
from ollama_meter.records import format_micros
from ollama_meter.reports._dashboard import TOP, budget_share, change, share
from ollama_meter.reports._render import iso_utc
from ollama_meter.reports._rows import PerfRow, SpendRow

if TYPE_CHECKING:
    from ollama_meter.reports._dashboard import Dashboard


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The dashboard's figures for ``/api/dash``."""
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
        f"spend_by_department_by_{unit}": _money_rows(
            d.spend.rollup(["tenant", "department", unit]), ["tenant", "department", unit]
        ),
        f"requests_by_{unit}": [
            {unit: label, "requests": r["requests"], "errors": r["errors"]}
            for label, r in d.requests_by_time().items()
        ],
        "models": _money_rows(
            d.by_cost(d.spend.rollup(["model"]), "model"),
            ["model", "input_tokens", "output_tokens", "unpriced_requests"],
        ),
        "top_users": [
            row
            for currency in d.currencies
            for row in _money_rows(d.top_users(currency)[:TOP], ["tenant", "user"])
        ],
        "departments": [
            {
                **_money_rows([dept.row], ["tenant", "department"])[0],
                "models": _money_rows(dept.models, ["model"]),
                "users": _money_rows(dept.users, ["user"]),
                unit: _money_rows(dept.days, [unit]),
            }
            for currency in d.currencies
            for dept in d.departments(currency)
        ],
        "budgets": [budget_json(b) for b in d.budgets],
        "warnings": [note] if (note := d.spend.capped_note()) else [],
        f"timing_by_{unit}": [_plain(r) for r in d.timing_by_time.rows],
        "timing_by_model": [_plain(r) for r in d.timing_by_model.rows],
        "failures": [
            {"status": f.status, "error_type": f.error_type, "requests": f.requests}
            for f in d.failures
        ],
    }


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


def _money_rows(rows: list[SpendRow], keys: list[str]) -> list[dict[str, object]]:
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
