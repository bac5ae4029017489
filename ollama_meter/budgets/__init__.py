"""Budgets: caps per tenant or department, reservation before a call, alerts after it.

Reads spend from the ledger's spans and keeps reservations and alerts there.
The meter calls in (admit, settle, check alerts); nothing here calls the meter.
"""

from ollama_meter.budgets._alerts import (
    PERIOD_ADVERB,
    Alert,
    AlertDispatcher,
    Channel,
    EmailChannel,
    WebhookChannel,
    deliver,
)
from ollama_meter.budgets._estimate import Estimate, PastCall, estimate_cost
from ollama_meter.budgets._gate import BudgetGate, Reservation
from ollama_meter.budgets._model import (
    DEFAULT_THRESHOLDS,
    EACH_TENANT,
    PERIOD_WORDS,
    PERIODS,
    Budget,
    parse_department_budgets,
    parse_limit,
    parse_thresholds,
)
from ollama_meter.budgets._status import BudgetStatus, budget_status, project

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EACH_TENANT",
    "PERIODS",
    "PERIOD_ADVERB",
    "PERIOD_WORDS",
    "Alert",
    "AlertDispatcher",
    "Budget",
    "BudgetGate",
    "BudgetStatus",
    "Channel",
    "EmailChannel",
    "Estimate",
    "PastCall",
    "Reservation",
    "WebhookChannel",
    "budget_status",
    "deliver",
    "estimate_cost",
    "parse_department_budgets",
    "parse_limit",
    "parse_thresholds",
    "project",
]
