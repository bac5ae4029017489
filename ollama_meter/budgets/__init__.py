"""Budgets: caps per tenant or department, reservation before a call, alerts after it.

Reads spend from the ledger's spans and keeps reservations and alerts there.
The meter calls in (admit, settle, check alerts); nothing here calls the meter.
"""

from ollama_meter.budgets._alerts import MAX_RUNS, AlertDispatcher, deliver, given_up
from ollama_meter.budgets._channels import Channel, EmailChannel, WebhookChannel
from ollama_meter.budgets._estimate import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_SEEN,
    MESSAGE_TOKENS,
    TEMPLATE_TOKENS,
    CallBound,
    Estimate,
    HiddenPrompts,
    bound_cost,
)
from ollama_meter.budgets._gate import BudgetGate
from ollama_meter.budgets._keeper import close_gates
from ollama_meter.budgets._leases import Reservation
from ollama_meter.budgets._refusals import unbounded
from ollama_meter.budgets._shown import ShownPrompts
from ollama_meter.budgets._status import BudgetStatus, budget_status, project
from ollama_meter.records import (
    Alert,
    Budget,
    PastCall,
    parse_limit,
    parse_thresholds,
)

__all__ = [
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_SEEN",
    "MAX_RUNS",
    "MESSAGE_TOKENS",
    "TEMPLATE_TOKENS",
    "Alert",
    "AlertDispatcher",
    "Budget",
    "BudgetGate",
    "BudgetStatus",
    "CallBound",
    "Channel",
    "EmailChannel",
    "Estimate",
    "HiddenPrompts",
    "PastCall",
    "Reservation",
    "ShownPrompts",
    "WebhookChannel",
    "bound_cost",
    "budget_status",
    "close_gates",
    "deliver",
    "given_up",
    "parse_limit",
    "parse_thresholds",
    "project",
    "unbounded",
]
