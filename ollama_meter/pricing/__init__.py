"""Pricing: rule choice and cost calculation. Pure functions, no I/O.

Takes usage facts and rules, returns integer micro-units. The rules, costs and
money helpers are plain records (``ollama_meter.records``), re-exported here.
Must not import the ledger, the meter or any entry point.
"""

from ollama_meter.pricing._book import PriceBook, usage_of
from ollama_meter.pricing._calc import compute_cost
from ollama_meter.pricing._rules import select_rule, sort_rules
from ollama_meter.pricing._toml import MAX_PRICING_BYTES, parse_pricing_toml, pricing_text
from ollama_meter.records import (
    MAX_AMOUNT,
    MAX_PRICE,
    MICROS,
    PRICE_FIELDS,
    PRICE_LIMITS,
    Cost,
    PriceRule,
    Usage,
    check_amount,
    format_micros,
    from_micros,
    model_names,
    parse_amount,
    parse_currency,
    specificity,
    to_micros,
)

__all__ = [
    "MAX_AMOUNT",
    "MAX_PRICE",
    "MAX_PRICING_BYTES",
    "MICROS",
    "PRICE_FIELDS",
    "PRICE_LIMITS",
    "Cost",
    "PriceBook",
    "PriceRule",
    "Usage",
    "check_amount",
    "compute_cost",
    "format_micros",
    "from_micros",
    "model_names",
    "parse_amount",
    "parse_currency",
    "parse_pricing_toml",
    "pricing_text",
    "select_rule",
    "sort_rules",
    "specificity",
    "to_micros",
    "usage_of",
]
