"""A call's bound under a hard budget (``bound_cost``): what its most usage costs under the rule
in force, with a time cap exactly when an hour of generation costs something under that rule,
and the load in the time it pays for exactly when an hour of loading does. Whether time costs
anything is asked of the price book once a rule (``PriceBook.timed``), not four costs a call:
these hold for any rule, tiny prices (an hour that rounds to no micro-unit) included, and for
any tokens the call may count."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import example, given, strategies as st

from ollama_meter.budgets import CallBound, bound_cost
from ollama_meter.budgets._estimate import (
    DEFAULT_EVAL_NS_PER_TOKEN,
    DEFAULT_LOAD_NS,
    DEFAULT_PROMPT_NS_PER_TOKEN,
)
from ollama_meter.pricing import MAX_PRICE, PRICE_LIMITS, PriceBook, PriceRule, Usage
from ollama_meter.records import MAX_TOKENS
from ollama_meter.records._span import MAX_DURATION_NS

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
HOUR_NS = 3_600 * 10**9
MODEL = "llama3.1:8b"


def _price(most: Decimal) -> st.SearchStrategy[Decimal | None]:
    tiny = st.sampled_from([Decimal("0.000001"), Decimal("0.0000001"), Decimal("0.00000027")])
    return st.one_of(
        st.none(),
        st.just(Decimal(0)),
        tiny,
        st.decimals(min_value=0, max_value=most, allow_nan=False, places=6),
    )


@st.composite
def rules(draw: st.DrawFn) -> PriceRule | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None  # no rule prices the model: unpriced
    fields = {
        "input_per_1m": draw(_price(MAX_PRICE)),
        "output_per_1m": draw(_price(MAX_PRICE)),
        "gpu_hour": draw(_price(MAX_PRICE)),
        "watts": draw(_price(PRICE_LIMITS["watts"])),
        "kwh_price": draw(_price(PRICE_LIMITS["kwh_price"])),
        "per_request": draw(_price(MAX_PRICE)),
    }
    if (fields["watts"] is None) != (fields["kwh_price"] is None):  # both or neither
        fields["watts"] = fields["kwh_price"] = None
    if all(value is None for value in fields.values()):
        fields["gpu_hour"] = Decimal(0)
    return PriceRule("*", "USD", id=1, charge_load=draw(st.booleans()), **fields)


@given(
    rule=rules(),
    inputs=st.integers(0, MAX_TOKENS + 5),
    outputs=st.integers(0, MAX_TOKENS + 5),
    passes=st.sampled_from([1, 2]),
    calls=st.integers(1, 3),
)
@example(  # an hour of generation rounds to no micro-unit: no time cap, as before
    rule=PriceRule("*", "USD", id=1, gpu_hour=Decimal("0.0000001")),
    inputs=10,
    outputs=20,
    passes=1,
    calls=1,
)
@example(  # time priced, the load too
    rule=PriceRule("*", "USD", id=1, gpu_hour=Decimal(2), charge_load=True),
    inputs=10,
    outputs=20,
    passes=2,
    calls=2,
)
def test_a_bound_has_a_time_cap_when_an_hour_costs_something(
    rule: PriceRule | None, inputs: int, outputs: int, passes: int, calls: int
) -> None:
    book = PriceBook([] if rule is None else [rule], tz=ZoneInfo("UTC"), currency="USD")
    bound = CallBound(inputs, outputs, passes=passes)
    ins, outs = min(inputs, MAX_TOKENS), min(outputs, MAX_TOKENS)
    prompt_ns = min(ins * DEFAULT_PROMPT_NS_PER_TOKEN, MAX_DURATION_NS)
    eval_ns = min(min(outs * DEFAULT_EVAL_NS_PER_TOKEN, MAX_DURATION_NS) * passes, MAX_DURATION_NS)
    most = Usage(ins, outs, prompt_ns, eval_ns, DEFAULT_LOAD_NS)
    # Asked as the bound once asked it: at the call's own tokens.
    untimed = book.cost(MODEL, NOV, Usage(ins, outs))
    timed = book.cost(MODEL, NOV, Usage(ins, outs, eval_ns=HOUR_NS)) != untimed
    loaded = book.cost(MODEL, NOV, Usage(ins, outs, load_ns=HOUR_NS)) != untimed
    for _ in range(calls):  # the book's answer for the rule, kept, is the same
        estimate = bound_cost(book, MODEL, NOV, bound, [])
        assert estimate.amount == book.cost(MODEL, NOV, most).total
        assert (estimate.busy_ns is not None) == timed == (estimate.wait_ns is not None)
        if timed:
            assert estimate.busy_ns == most.busy_ns(charge_load=loaded)
