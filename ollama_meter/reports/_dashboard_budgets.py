"""The dashboard's budget gauges: each budget's share, projection, state and note.

Built from :class:`~ollama_meter.budgets.BudgetStatus` rows; drawn by the page's template.
Builds data; reads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from ollama_meter._text import isolate
from ollama_meter.budgets import BudgetStatus
from ollama_meter.reports._charts import Gauge, gauge
from ollama_meter.reports._dashboard import budget_share, share

SHOWN_BUDGETS = 25
"""How many budget gauges the page draws: a ``*`` budget has one per tenant, so a thousand
tenants drew a thousand gauges (5 MB of page). Past this, the ones nearest or over their
limit, and how many more under them (``ometer budget status`` and ``/api/dash`` list all)."""


@dataclass(frozen=True, slots=True)
class BudgetPanel:
    status: BudgetStatus
    used: Decimal
    projected: Decimal | None
    state: str
    tone: str
    note: str
    gauge: Gauge

    @property
    def most(self) -> Decimal:
        """The gauge's ``aria-valuemax``: 100, or the share spent past it. A meter's value is
        kept within its bounds, so a budget at 150 % under a maximum of 100 was read out as
        100, as one just at its limit."""
        return max(Decimal(100), self.used)


def shown_scope(scope: str) -> str:
    """A budget's scope (``acme/sales``) as its gauge shows it: tenant and department each set
    apart, so a right-to-left tenant keeps its place before its department (``א/2024`` was
    drawn "2024/א", the department's digits taking the tenant's direction)."""
    return "/".join(isolate(part) for part in scope.split("/", 1))


_SEVERITY = {"exhausted": 3, "over": 3, "refusing": 2, "warning": 1}


def budget_panels(statuses: Sequence[BudgetStatus]) -> tuple[list[BudgetPanel], int]:
    """The gauges the page draws, in the ledger's order, and how many more there are: past
    :data:`SHOWN_BUDGETS`, those over or nearest their limit (by state, then share used)."""
    panels = [_budget_panel(status) for status in statuses]
    if len(panels) <= SHOWN_BUDGETS:
        return panels, 0
    by_risk = sorted(
        range(len(panels)),
        key=lambda i: (-_SEVERITY.get(panels[i].state, 0), -panels[i].used, i),
    )
    kept = sorted(by_risk[:SHOWN_BUDGETS])
    return [panels[i] for i in kept], len(panels) - len(kept)


def _budget_panel(status: BudgetStatus) -> BudgetPanel:
    used = budget_share(status)
    projected = share(status.projected, status.budget.limit)
    state = status.state
    tone = {"ok": "ok", "warning": "warning"}.get(state, "over")
    note = {
        "exhausted": "limit reached: calls are refused",
        "refusing": "refusing calls that may cost more than is left",
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
