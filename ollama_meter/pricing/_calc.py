"""What a call costs under a rule: a pure function of the rule and the usage.

Each part is computed exactly in Decimal and rounded once, to integer
micro-units; the total is the sum of the rounded parts, so parts always add up
to the total in every report.
"""

from __future__ import annotations

from decimal import Decimal

from ollama_meter.records import Cost, PriceRule, Usage, to_micros

_MILLION = Decimal(1_000_000)
_NS_PER_HOUR = Decimal(3_600_000_000_000)
_WATTS_PER_KW = Decimal(1000)


def _per_million(count: int, price: Decimal | None) -> Decimal:
    return Decimal(count) * price / _MILLION if price is not None else Decimal(0)


def compute_cost(rule: PriceRule | None, usage: Usage, *, currency: str) -> Cost:
    """Price ``usage`` under ``rule``; with no rule the cost is zero and marked unpriced."""
    if rule is None:
        return Cost(currency=currency)
    tokens = _per_million(usage.input_tokens, rule.input_per_1m) + _per_million(
        usage.output_tokens, rule.output_per_1m
    )
    busy_hours = Decimal(usage.busy_ns(charge_load=rule.charge_load)) / _NS_PER_HOUR
    compute = busy_hours * rule.gpu_hour if rule.gpu_hour is not None else Decimal(0)
    energy = Decimal(0)
    if rule.watts is not None and rule.kwh_price is not None:
        energy = busy_hours * rule.watts / _WATTS_PER_KW * rule.kwh_price
    fee = Decimal(0)
    if usage.answered:
        fee = (rule.per_request or Decimal(0)) + _per_million(
            usage.input_tokens + usage.output_tokens, rule.fee_per_1m
        )
    return Cost(
        currency=rule.currency,
        tokens=to_micros(tokens),
        compute=to_micros(compute),
        energy=to_micros(energy),
        fee=to_micros(fee),
        rule_id=rule.id,
        unpriced=False,
    )
