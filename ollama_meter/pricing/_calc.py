"""What a call costs under a rule: a pure function of the rule and the usage.

Each part is computed exactly, as a ratio of integers, and rounded once, half to even,
to integer micro-units; the total is the sum of the rounded parts, so parts always add
up to the total in every report. Not in Decimal: a busy time in hours (ns / 3.6e12) has
no exact decimal, and 400 s at 1 W and 0.0495 per kWh, exactly 5.5 micro-units, came to
5.4999… in Decimal's 28 digits: 5, where half to even gives 6.
"""

from __future__ import annotations

from decimal import Decimal

from ollama_meter.records import MICROS, Cost, PriceRule, Usage, round_half_even as _round

_NS_PER_HOUR = 3_600_000_000_000
_WATTS_PER_KW = 1000
_NONE = (0, 1)


def _ratio(price: Decimal | None) -> tuple[int, int]:
    return price.as_integer_ratio() if price is not None else _NONE


def compute_cost(rule: PriceRule | None, usage: Usage, *, currency: str) -> Cost:
    """Price ``usage`` under ``rule``; with no rule the cost is zero and marked unpriced."""
    if rule is None:
        return Cost(currency=currency)
    # A count times a price per million tokens is micro-units.
    (in_n, in_d), (out_n, out_d) = _ratio(rule.input_per_1m), _ratio(rule.output_per_1m)
    tokens = _round(
        usage.input_tokens * in_n * out_d + usage.output_tokens * out_n * in_d, in_d * out_d
    )
    busy_ns = usage.busy_ns(charge_load=rule.charge_load)
    gpu_n, gpu_d = _ratio(rule.gpu_hour)
    compute = _round(busy_ns * gpu_n * MICROS, gpu_d * _NS_PER_HOUR)
    energy = 0
    if rule.watts is not None and rule.kwh_price is not None:
        (w_n, w_d), (k_n, k_d) = _ratio(rule.watts), _ratio(rule.kwh_price)
        energy = _round(busy_ns * w_n * k_n * MICROS, w_d * k_d * _WATTS_PER_KW * _NS_PER_HOUR)
    fee = 0
    if usage.answered:
        (r_n, r_d), (f_n, f_d) = _ratio(rule.per_request), _ratio(rule.fee_per_1m)
        counted = usage.input_tokens + usage.output_tokens
        fee = _round(r_n * MICROS * f_d + counted * f_n * r_d, r_d * f_d)
    return Cost(
        currency=rule.currency,
        tokens=tokens,
        compute=compute,
        energy=energy,
        fee=fee,
        rule_id=rule.id,
        unpriced=False,
    )
