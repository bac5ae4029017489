"""Pricing is pure: exact money for every part, the most specific rule, effective dates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, strategies as st

from ollama_meter.pricing import (
    Cost,
    PriceBook,
    PriceRule,
    Usage,
    compute_cost,
    format_micros,
    parse_amount,
    parse_pricing_toml,
    select_rule,
    specificity,
    to_micros,
)
from ollama_meter.records import parse_department_budgets

D = Decimal


def rule(pattern: str = "*", **kw: object) -> PriceRule:
    kw.setdefault("currency", "USD")
    if not any(
        k in kw
        for k in ("input_per_1m", "output_per_1m", "gpu_hour", "watts", "per_request", "fee_per_1m")
    ):
        kw["input_per_1m"] = D(1)
    return PriceRule(pattern=pattern, **kw)  # type: ignore[arg-type]


def test_token_price_is_exact() -> None:
    cost = compute_cost(
        rule("llama3.1:*", id=1, input_per_1m=D(1000), output_per_1m=D(2000)),
        Usage(input_tokens=7, output_tokens=12),
        currency="USD",
    )
    assert (cost.tokens, cost.total, cost.unpriced, cost.rule_id) == (31000, 31000, False, 1)
    assert format_micros(cost.total) == "0.031000"
    # Rounded per call and part, half to even (the README says so): less than half a
    # micro-unit is 0, exactly half rounds to even.
    tiny = rule("*", id=2, input_per_1m=D("0.10"), output_per_1m=D("0.5"))
    assert compute_cost(tiny, Usage(input_tokens=3), currency="USD").total == 0
    assert compute_cost(tiny, Usage(output_tokens=1), currency="USD").total == 0  # 0.5 → 0
    assert compute_cost(tiny, Usage(output_tokens=3), currency="USD").total == 2  # 1.5 → 2


def test_gpu_hour_charges_prompt_eval_plus_eval_only() -> None:
    usage = Usage(prompt_eval_ns=1_500_000_000, eval_ns=2_100_000_000, load_ns=9_000_000_000)
    cost = compute_cost(rule(gpu_hour=D("3.60")), usage, currency="USD")
    # 3.6 s at 3.60/hour = 0.0036
    assert cost.compute == 3600
    with_load = compute_cost(rule(gpu_hour=D("3.60"), charge_load=True), usage, currency="USD")
    assert with_load.compute == 12600  # 12.6 s


def test_energy_is_watts_times_busy_hours_times_kwh_price() -> None:
    usage = Usage(prompt_eval_ns=0, eval_ns=3_600_000_000_000)  # one hour
    cost = compute_cost(rule(watts=D(350), kwh_price=D("0.30")), usage, currency="EUR")
    assert cost.energy == to_micros(D("0.105"))
    assert cost.currency == "USD"  # the rule's currency wins


def test_fees_apply_only_when_ollama_answered() -> None:
    fees = rule(per_request=D("0.002"), fee_per_1m=D("0.50"))
    answered = compute_cost(
        fees, Usage(input_tokens=600_000, output_tokens=400_000), currency="USD"
    )
    assert answered.fee == 2000 + 500_000
    refused = compute_cost(fees, Usage(answered=False), currency="USD")
    assert refused.fee == 0


@pytest.mark.parametrize(
    ("fields", "served"),
    [
        ({"status": "ok"}, True),
        # stopped while Ollama worked on it: its prompt and time charged, so its fees
        ({"status": "client_abort", "input_tokens": 7, "duration_source": "measured"}, True),
        ({"status": "client_abort", "output_tokens": 3, "eval_duration_ns": 10**6}, True),
        # gone while it waited for a gateway's slot: sent to no server
        ({"status": "client_abort", "upstream_host": ""}, False),
        # stopped before Ollama had the request (connecting, sending): nothing consumed
        ({"status": "client_abort"}, False),
        ({"status": "error"}, False),
        ({"status": "rejected", "upstream_host": ""}, False),
    ],
)
def test_request_fees_apply_to_calls_ollama_served(fields: dict[str, Any], served: bool) -> None:
    """A caller gone while its call waited for a gateway's slot (or before Ollama had it) was
    charged the per-request fee of a call no server saw: fees went by the span's status
    (``client_abort``), not by whether anything was served."""
    from tests.factories import make_span

    fees = PriceRule(pattern="*", currency="USD", per_request=D("0.002"), id=1)
    book = PriceBook([fees], tz=ZoneInfo("UTC"), currency="USD")
    nothing = {"input_tokens": 0, "output_tokens": 0, "duration_source": None}
    nothing |= {"prompt_eval_duration_ns": None, "eval_duration_ns": None}
    span = make_span(**(nothing | fields))
    assert book.cost_of(span).fee == (2000 if served else 0)


def test_no_rule_is_zero_and_unpriced() -> None:
    cost = compute_cost(None, Usage(input_tokens=10), currency="EUR")
    assert cost == Cost(currency="EUR")
    assert cost.unpriced and cost.total == 0


_SPELLINGS = [
    lambda name, tag: f"{name}{tag}",
    lambda name, tag: f"library/{name}{tag}",
    lambda name, tag: f"registry.ollama.ai/library/{name}{tag}",
    lambda name, tag: f"REGISTRY.OLLAMA.AI/Library/{name.upper()}{tag.upper()}",
]


@given(
    name=st.sampled_from(["llama3.1", "qwen2.5", "mistral"]),
    tags=st.sampled_from([("", ""), ("", ":latest"), (":latest", ""), (":latest", ":latest"),
                          (":8b", ":8b"), (":*", ""), (":*", ":latest"), (":*", ":8b")]),
    rule_spelling=st.sampled_from(range(len(_SPELLINGS))),
    call_spelling=st.sampled_from(range(len(_SPELLINGS))),
)  # fmt: skip
def test_a_rule_prices_every_spelling_of_its_model(
    name: str, tags: tuple[str, str], rule_spelling: int, call_spelling: int
) -> None:
    """Ollama reads 'llama3.1', 'llama3.1:latest', 'library/llama3.1' and
    'registry.ollama.ai/library/llama3.1:latest' as one model. A call's name was read in
    each of its spellings, but a rule's was not: 'library/llama3.1:*' and
    'registry.ollama.ai/library/llama3.1:8b' priced no call to 'llama3.1:8b', and
    'llama3.1' none to 'llama3.1:latest'; those calls went unpriced, counted as 0."""
    rule_tag, call_tag = tags
    pattern = _SPELLINGS[rule_spelling](name, rule_tag)
    model = _SPELLINGS[call_spelling](name, call_tag)
    day = date(2026, 11, 1)
    assert select_rule([rule(pattern)], model, day) is not None, (pattern, model)
    # and never another model: another name, another namespace, another tag
    assert select_rule([rule(pattern)], model.lower().replace(name, "other"), day) is None
    assert select_rule([rule(pattern)], f"someone/{name}{call_tag}", day) is None
    if rule_tag != ":*":
        assert select_rule([rule(pattern)], f"{name}:70b", day) is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama3.1:8b", "llama3.1:8b"),
        ("llama3.1:70b", "llama3.1:*"),
        ("llama3.1", "llama3.1:*"),  # bare name is :latest
        ("qwen2.5:7b", "*"),
        ("LLAMA3.1:70B", "llama3.1:*"),
    ],
)
def test_most_specific_rule_wins(model: str, expected: str) -> None:
    rules = [
        rule("*", id=1),
        rule("llama3.1:*", id=2),
        rule("llama3.1:8b", id=3),
        rule("llama*", id=4),
    ]
    chosen = select_rule(rules, model, date(2026, 11, 1))
    assert chosen is not None and chosen.pattern == expected


def test_effective_dates_pick_the_rule_in_force() -> None:
    old = rule("llama3.1:*", id=1, input_per_1m=D(1))
    new = rule("llama3.1:*", id=2, input_per_1m=D(2), effective_from=date(2026, 11, 15))
    ended = rule("llama3.1:8b", id=3, input_per_1m=D(9), effective_until=date(2026, 11, 10))
    rules = [old, new, ended]
    assert select_rule(rules, "llama3.1:8b", date(2026, 11, 9)) is ended
    assert select_rule(rules, "llama3.1:8b", date(2026, 11, 10)) is old
    assert select_rule(rules, "llama3.1:8b", date(2026, 11, 15)) is new


def test_price_book_reads_dates_in_the_configured_zone() -> None:
    new = rule("*", id=2, input_per_1m=D(2), effective_from=date(2026, 11, 15))
    old = rule("*", id=1, input_per_1m=D(1))
    book = PriceBook([old, new], tz=ZoneInfo("Asia/Tokyo"), currency="USD")
    # 16:00 UTC on the 14th is already the 15th in Tokyo
    assert book.rule_for("m", datetime(2026, 11, 14, 16, tzinfo=UTC)) is new
    assert book.rule_for("m", datetime(2026, 11, 14, 14, tzinfo=UTC)) is old
    assert (
        book.cost("m", datetime(2026, 11, 14, 16, tzinfo=UTC), Usage(input_tokens=1_000_000)).total
        == 2_000_000
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"currency": "USD"}, "sets no price"),
        ({"currency": "USD", "watts": D(300)}, "both --watts and --kwh-price"),
        ({"currency": "USD", "input_per_1m": D(-1)}, "must not be negative"),
        (
            {
                "currency": "USD",
                "input_per_1m": D(1),
                "effective_from": date(2026, 2, 1),
                "effective_until": date(2026, 1, 1),
            },
            "after its start",
        ),
        # From Python: an AttributeError (no ``is_finite``), not a word of what to give.
        ({"currency": "USD", "input_per_1m": 0.15}, r"^input_per_1m is an exact amount: "),
        ({"currency": "USD", "gpu_hour": True}, r"^gpu_hour is an exact amount: .* not bool$"),
        ({"currency": "USD", "per_request": "0.01"}, r"^per_request is an exact amount: "),
    ],
)
def test_invalid_rules_say_why(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceRule(pattern="x", **kwargs)  # type: ignore[arg-type]


def test_a_price_given_as_a_whole_number_is_that_exact_amount() -> None:
    """``PriceRule(input_per_1m=1000)`` raised AttributeError: 'int' object has no attribute
    'is_finite'. A whole number is an exact amount, as a Decimal of it is."""
    given = PriceRule(pattern="*", currency="USD", input_per_1m=1000, gpu_hour=2)  # type: ignore[arg-type]
    assert given.same_as(
        PriceRule(pattern="*", currency="USD", input_per_1m=D(1000), gpu_hour=D(2))
    )
    assert given.prices() == {"input_per_1m": D(1000), "gpu_hour": D(2)}
    assert all(type(price) is Decimal for price in given.prices().values())


def _taken(make: Callable[[str], Any], text: str) -> tuple[Any, str]:
    """What ``make`` made of ``text`` and ""; or None and why it refused it."""
    try:
        return make(text), ""
    except ValueError as exc:
        return None, str(exc)


@given(st.text(max_size=20))
@example("llama3\n")
@example("llama3.1:*\n")
def test_a_pattern_is_printable_ascii_with_no_space(text: str) -> None:
    """Whatever is taken as a pattern lists on one line and in one CSV cell ('llama3\\n' was
    stored, a rule that matched no model)."""
    made, refused = _taken(rule, text)
    if refused:
        assert refused.startswith("model pattern ")
        return
    assert made.pattern == text and text.isascii() and text.isprintable() and " " not in text


def test_bad_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="not a model name or glob"):
        rule("llama 3")


def test_parse_amount_rejects_floats_and_junk() -> None:
    assert parse_amount("3.60") == D("3.60")
    with pytest.raises(ValueError, match="not a number"):
        parse_amount("three")
    with pytest.raises(ValueError, match="negative"):
        parse_amount("-1")
    with pytest.raises(ValueError, match="finite"):
        parse_amount("Infinity")
    with pytest.raises(TypeError):
        parse_amount(1.5)  # type: ignore[arg-type]


WRITTEN = st.text(
    alphabet=st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789._eE+-  "),
    max_size=10,
)


@given(WRITTEN)
@example("１２")  # fullwidth
@example("٣")  # Arabic-Indic
@example("1_000")
@example("²")
@example("-0.00")
def test_an_amount_is_written_in_ascii_digits(text: str) -> None:
    """Whatever is taken as money reads the same to a person, a spreadsheet and Decimal:
    ASCII digits, a point, an exponent; Decimal() alone also took other scripts' digits."""
    value, refused = _taken(parse_amount, text)
    if refused:
        assert refused.startswith("amount ")  # one line that names what was wrong
        return
    written = text.strip()
    assert written.isascii() and "_" not in written and value == Decimal(written)
    assert not value.is_signed()  # '-0' is stored, listed and exported as 0
    assert parse_amount(f"{value:f}") == value


@given(
    st.sampled_from(["0", "00", "0.0", "1", "3.6", "12345"]),
    st.integers(min_value=-(10**6), max_value=10**6) | st.integers(-200, 200),
)
@example("0", -1_000_000)  # '0e-999999999' (`pricing set --input-per-1m`): a gigabyte of zeros
@example("0", 1_000_000)
def test_an_amount_taken_is_short_whatever_its_exponent(mantissa: str, exponent: int) -> None:
    """A price is stored and listed as its exact text (``f"{value:f}"``): an accepted amount
    must stay short. A zero was exempt from the digit bound, so '0e-999999999' was taken,
    and storing it wrote a billion zeros (the command ran out of memory)."""
    text = f"{mantissa}e{exponent}"
    value, refused = _taken(parse_amount, text)
    if refused:
        assert refused.startswith("amount ") and len(refused) < 200
        return
    assert len(f"{value:f}") <= 100
    assert value == Decimal(text)


def test_a_rule_refuses_a_zero_written_with_thousands_of_places() -> None:
    for name in ("input_per_1m", "gpu_hour"):
        with pytest.raises(ValueError, match="digits"):
            rule(**{name: Decimal("0E-5000")})
    with pytest.raises(ValueError, match="digits"):
        parse_pricing_toml(
            "[[rule]]\nmodel = 'x'\ninput_per_1m = 0e-5000\n", default_currency="USD"
        )


@pytest.mark.parametrize(
    "fields",
    ['model = "llama3.1:*"\npattern = "qwen2.5:*"', 'model = ""\npattern = "qwen2.5:*"'],
)
def test_a_toml_rule_names_its_models_once(fields: str) -> None:
    """A rule with both ``model`` and ``pattern`` priced the one and dropped the other
    without a word (and ``model = ""`` hid a ``pattern``)."""
    with pytest.raises(ValueError, match="rule 1: .*model or pattern, not both"):
        parse_pricing_toml(f"[[rule]]\n{fields}\ninput_per_1m = 1\n", default_currency="USD")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('model = "llama3.1:*"\ninput_per_1m = 0.15', 'model = "llama3.1:*"\ngpu_hour = 2.40'),
        (
            'model = "llama3.1"\ninput_per_1m = 1',
            'model = "library/llama3.1:latest"\ninput_per_1m = 2',
        ),
        (
            'model = "qwen2.5:*"\ninput_per_1m = 1\nfrom = 2026-12-01\nuntil = 2027-01-01',
            'pattern = "qwen2.5:*"\ninput_per_1m = 1\ncurrency = "EUR"\nfrom = "2026-12-01"\nuntil = 2027-01-01',
        ),
    ],
)
def test_a_file_that_prices_a_pattern_twice_on_the_same_dates_is_refused(
    first: str, second: str
) -> None:
    """Only one rule prices a call: a token price and a GPU-hour price for 'llama3.1:*' in
    two [[rule]] tables with the same dates were taken without a word, and every call paid
    the second alone (the token price never applied, on any day)."""
    text = f"[[rule]]\n{first}\n\n[[rule]]\n{second}\n"
    with pytest.raises(ValueError) as raised:
        parse_pricing_toml(text, default_currency="USD")
    message = str(raised.value)
    assert message.startswith("rule 2: prices ") and "rule 1" in message, message
    assert "one rule" in message and "\n" not in message


@pytest.mark.parametrize(
    "second",
    [
        'model = "llama3.1:*"\ninput_per_1m = 0.15',  # the same rule twice: it prices alike
        'model = "llama3.1:*"\ninput_per_1m = 0.20\nfrom = 2026-12-01',  # a price change
        'model = "llama3.1:8b"\ninput_per_1m = 0.20',  # a more specific pattern
    ],
)
def test_a_file_may_change_a_price_from_a_date_or_name_a_narrower_pattern(second: str) -> None:
    text = f'[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 0.15\n\n[[rule]]\n{second}\n'
    assert len(parse_pricing_toml(text, default_currency="USD")) == 2


def test_toml_rules_are_exact_and_validated() -> None:
    text = """
currency = "EUR"
[[rule]]
model = "llama3.1:*"
input_per_1m = 0.1
output_per_1m = "0.30"
from = 2026-11-01
[[rule]]
model = "qwen2.5:*"
gpu_hour = 3.60
watts = 350
kwh_price = 0.3
charge_load = true
currency = "usd"
"""
    first, second = parse_pricing_toml(text, default_currency="USD")
    assert first.input_per_1m == D("0.1") and first.output_per_1m == D("0.30")
    assert first.currency == "EUR" and first.effective_from == date(2026, 11, 1)
    assert second.gpu_hour == D("3.60") and second.charge_load and second.currency == "USD"
    with pytest.raises(ValueError, match="rule 1: unknown field"):
        parse_pricing_toml('[[rule]]\nmodel="x"\ninput=1\n', default_currency="USD")
    with pytest.raises(ValueError, match="needs a model pattern"):
        parse_pricing_toml("[[rule]]\ninput_per_1m=1\n", default_currency="USD")
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_pricing_toml("[[rule\n", default_currency="USD")
    with pytest.raises(ValueError, match="no \\[\\[rule\\]\\]"):
        parse_pricing_toml("currency='USD'\n", default_currency="USD")
    with pytest.raises(ValueError, match="not a date"):
        parse_pricing_toml(
            '[[rule]]\nmodel="x"\ninput_per_1m=1\nfrom="soon"\n', default_currency="USD"
        )
    with pytest.raises(ValueError, match="rule 1: energy"):
        parse_pricing_toml('[[rule]]\nmodel="x"\nwatts=1\n', default_currency="USD")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2026-12-01T10:00:00", "10:00:00 is not a date; rules change at midnight"),
        ("2026-12-01 10:00:00+05:00", "10:00:00\\+05:00 is not a date"),
        ("10:00:00", "10:00:00 is not a date"),
        ("20261201", "20261201 is not a date"),
        ("1969-12-31", "outside the dates ometer works with"),
        ('"9999-01-01"', "outside the dates ometer works with"),
    ],
)
def test_a_toml_date_is_a_day_never_a_moment_cut_to_its_day(value: str, says: str) -> None:
    """A price meant from 10:00 must not silently apply from midnight (the ledger keeps days)."""
    text = f'[[rule]]\nmodel="x"\ninput_per_1m=1\nfrom={value}\n'
    with pytest.raises(ValueError, match=f"^rule 1: from .*{says}"):
        parse_pricing_toml(text, default_currency="USD")
    until = text.replace("from=", "until=")
    with pytest.raises(ValueError, match="^rule 1: until "):
        parse_pricing_toml(until, default_currency="USD")


prices = st.decimals(
    min_value=0, max_value=100_000, places=4, allow_nan=False, allow_infinity=False
) | st.decimals(min_value=0, max_value=1, places=12, allow_nan=False, allow_infinity=False)
kwh_prices = st.decimals(min_value=0, max_value=1_000, places=4, allow_nan=False)
counts = st.integers(min_value=0, max_value=10_000_000)
nanos = st.integers(min_value=0, max_value=10**13) | st.sampled_from([400 * 10**9, 1_200 * 10**9])
"""Busy times of any length, and of a ninth and a third of an hour, which no decimal holds."""


@given(
    st.decimals(min_value=-(10**12), max_value=10**12, places=34, allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False, min_value=-1, max_value=1, places=8)
)
@example(D("0.0000025000000000000000000000000001"))  # 2.5000…01 micro-units: 3
@example(D("123456789012.3456785000000000000000000001"))
def test_an_amount_in_micro_units_is_rounded_once_half_to_even(amount: Decimal) -> None:
    """Budgets and fixed costs of up to 40 digits: Decimal's 28 rounded them before the
    final rounding did (2.5000…01 micro-units came to 2)."""
    assert to_micros(amount) == round(Fraction(amount) * 1_000_000)


@given(
    prices,
    prices,
    prices,
    prices,
    kwh_prices,
    prices,
    counts,
    counts,
    nanos,
    nanos,
    nanos,
    st.booleans(),
)
@example(D(0), D(0), D(0), D(1), D("0.0495"), D(0), 0, 0, 400 * 10**9, 0, 0, False)  # 5.5 → 6
@example(D(0), D(0), D("0.0000135"), D(1), D(0), D(0), 0, 0, 400 * 10**9, 0, 0, False)  # 1.5 → 2
def test_parts_are_exact_rounded_and_sum_to_total(
    inp: Decimal,
    out: Decimal,
    gpu: Decimal,
    watts: Decimal,
    kwh: Decimal,
    fee: Decimal,
    n_in: int,
    n_out: int,
    pe: int,
    ev: int,
    load: int,
    charge_load: bool,
) -> None:
    r = rule(
        input_per_1m=inp,
        output_per_1m=out,
        gpu_hour=gpu,
        watts=watts,
        kwh_price=kwh,
        fee_per_1m=fee,
        charge_load=charge_load,
    )
    usage = Usage(n_in, n_out, pe, ev, load)
    cost = compute_cost(r, usage, currency="USD")
    busy = pe + ev + (load if charge_load else 0)
    # Each part is the exact amount in micro-units, rounded once, half to even (round() on a
    # Fraction): never one micro-unit off at a tie, however the busy time divides the hour.
    hours = Fraction(busy, 3_600_000_000_000)
    assert cost.tokens == round(n_in * Fraction(inp) + n_out * Fraction(out))
    assert cost.compute == round(hours * Fraction(gpu) * 1_000_000)
    assert cost.energy == round(hours * Fraction(watts) / 1000 * Fraction(kwh) * 1_000_000)
    assert cost.fee == round((n_in + n_out) * Fraction(fee))
    assert cost.total == cost.tokens + cost.compute + cost.energy + cost.fee
    assert min(cost.tokens, cost.compute, cost.energy, cost.fee) >= 0
    assert all(isinstance(v, int) for v in (cost.tokens, cost.compute, cost.energy, cost.fee))


@given(
    st.lists(
        st.sampled_from(["*", "llama*", "llama3.1:*", "llama3.1:8b", "*:8b", "l?ama3.1:8b"]),
        min_size=1,
        max_size=6,
    ),
    st.randoms(),
)
def test_rule_choice_does_not_depend_on_order(patterns: list[str], rnd) -> None:  # type: ignore[no-untyped-def]
    rules = [rule(p, id=i + 1) for i, p in enumerate(patterns)]
    chosen = select_rule(rules, "llama3.1:8b", date(2026, 1, 1))
    shuffled = list(rules)
    rnd.shuffle(shuffled)
    assert select_rule(shuffled, "llama3.1:8b", date(2026, 1, 1)) == chosen


_DAYS = st.none() | st.integers(0, 6).map(
    lambda n: date(2026, 11, 28 + n) if n < 3 else date(2026, 12, n - 2)
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["*", "llama3.1:*", "llama3.1:8b", "l?ama3.1:8b"]), _DAYS, _DAYS),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 8).map(lambda n: date(2026, 11, 27) + timedelta(days=n)),
    st.randoms(),
)
def test_windows_that_touch_or_overlap_give_one_rule_a_day(  # type: ignore[no-untyped-def]
    specs: list[tuple[str, date | None, date | None]], day: date, rnd
) -> None:
    """On any day exactly one rule prices a model, or none: the most specific in force, then
    the latest start, then the latest added, whatever order they come in. A rule that ends
    on a day (until is exclusive) gives way that very day to one that starts on it."""
    rules = []
    for i, (pattern, one, other) in enumerate(specs, start=1):
        start, end = one, other
        if one is not None and other is not None and other <= one:
            start, end = other, one + timedelta(days=1)
        rules.append(rule(pattern, id=i, effective_from=start, effective_until=end))
    chosen = select_rule(rules, "llama3.1:8b", day)
    rnd.shuffle(rules)
    assert select_rule(rules, "llama3.1:8b", day) == chosen
    candidates = [r for r in rules if r.applies_on(day) and r.matches("llama3.1:8b")]
    if chosen is None:
        assert candidates == []
        return
    assert chosen in candidates
    assert chosen.effective_until is None or chosen.effective_until > day
    for other in candidates:
        key = (specificity(other.pattern), other.effective_from or date.min, other.id)
        assert key <= (specificity(chosen.pattern), chosen.effective_from or date.min, chosen.id)


@given(
    asked=st.sampled_from(["llama3.1:8b", "mystery:1b"]),
    answered=st.sampled_from([None, "llama3.1:8b", "qwen2.5:7b", "mystery:1b"]),
)
def test_a_span_is_priced_by_the_model_answered_else_the_model_asked(
    asked: str, answered: str | None
) -> None:
    """A server that answers with a model no rule prices (an alias, or a lie) cannot make a
    priced call free: the span is then priced by the model the caller asked for."""
    from tests.factories import make_span

    llama = PriceRule(pattern="llama3.1:*", currency="USD", input_per_1m=Decimal(1000), id=1)
    qwen = PriceRule(pattern="qwen2.5:*", currency="USD", input_per_1m=Decimal(3000), id=2)
    book = PriceBook([llama, qwen], tz=ZoneInfo("UTC"), currency="USD")
    span = make_span(request_model=asked, response_model=answered, input_tokens=1000)
    by = {"llama3.1:8b": 1, "qwen2.5:7b": 2}
    expected = by.get(answered or asked) or by.get(asked)
    cost = book.cost_of(span)
    assert cost.rule_id == expected
    assert cost.tokens == {1: 1_000_000, 2: 3_000_000, None: 0}[expected]
    assert cost.unpriced == (expected is None)


@given(
    name=st.sampled_from(["llama3.1", "qwen2.5"]),
    tags=st.sampled_from([("", ""), ("", ":latest"), (":latest", ""), (":8b", ":8b"),
                          (":*", ":*")]),
    old_spelling=st.sampled_from(range(len(_SPELLINGS))),
    new_spelling=st.sampled_from(range(len(_SPELLINGS))),
)  # fmt: skip
def test_a_price_change_takes_effect_however_the_model_is_spelled(
    name: str, tags: tuple[str, str], old_spelling: int, new_spelling: int
) -> None:
    """Two spellings Ollama reads as one model are one pattern, equally specific: the later
    --from wins. 'library/llama3.1:8b' was more specific than 'llama3.1:8b' (more letters),
    so a raise written 'llama3.1:8b' --from 2026-12-01 never took effect over an older rule
    spelled in full, and 'llama3.1:latest' beat any later 'llama3.1'."""
    old = rule(_SPELLINGS[old_spelling](name, tags[0]), id=1, input_per_1m=D(1))
    new = rule(
        _SPELLINGS[new_spelling](name, tags[1]),
        id=2,
        input_per_1m=D(2),
        effective_from=date(2026, 12, 1),
    )
    model = f"{name}:8b" if tags[0] in (":8b", ":*") else name
    for rules in ([old, new], [new, old]):
        assert select_rule(rules, model, date(2026, 11, 30)) is old
        assert select_rule(rules, model, date(2026, 12, 1)) is new
    assert specificity(old.pattern) == specificity(new.pattern)


@given(
    digits=st.integers(41, 6000),
    exponent=st.none() | st.integers(-(10**25), 10**25),
    quoted=st.booleans(),
)
@example(digits=5000, exponent=None, quoted=False)  # past Python's 4,300 digits for an int
@example(digits=1, exponent=10**20, quoted=True)  # past any exponent Decimal holds
@example(digits=1, exponent=-(10**20), quoted=False)
@example(digits=41, exponent=-(10**18) - 1, quoted=False)  # past 10**18, and held by Decimal
def test_a_price_of_any_length_or_exponent_is_one_short_line(
    digits: int, exponent: int | None, quoted: bool
) -> None:
    """An exponent past Decimal's in a pricing file or DEPARTMENT_BUDGETS
    ('1e-99999999999999999999') was "a bug in ometer" (exit 70: Decimal's InvalidOperation
    came through the parser) on every command that read them; an integer past 4,300 digits
    said "Exceeds the limit (4300 digits) for integer string conversion ... use
    sys.set_int_max_str_digits()", Python's advice, not a user's; given as text or an option
    it was "not a number; write it with the digits 0-9 and a point" though it was written
    so. An error shows a long amount by its ends."""
    number = "7" * digits + ("" if exponent is None else f"e{exponent}")
    text = f'"{number}"' if quoted else number
    with pytest.raises(ValueError) as refused:
        parse_pricing_toml(
            f"[[rule]]\nmodel = 'x'\ninput_per_1m = {text}\n", default_currency="USD"
        )
    message = str(refused.value)
    assert message.startswith(("rule 1: input_per_1m ", "not a pricing file")), message
    assert "sys." not in message and "\n" not in message and len(message) < 300, message
    with pytest.raises(ValueError) as refused:  # DEPARTMENT_BUDGETS reads amounts as JSON
        parse_department_budgets(f'{{"sales": {{"daily": {text}}}}}', currency="USD")
    message = str(refused.value)
    assert message.startswith("'sales' daily ") and "sys." not in message, message
    assert "\n" not in message and len(message) < 300, message
    with pytest.raises(ValueError) as refused:
        parse_amount(number)
    message = str(refused.value)
    assert message.startswith("amount ") and "\n" not in message and len(message) < 300, message
    # Its exponent is named when no Decimal holds the number: past 10**18 is not enough to
    # say (41 digits and e-1000000000000000001 are held: the digits count too).
    try:
        Decimal(number)
    except InvalidOperation:
        assert "has an exponent no amount has" in message, message
    else:
        assert "exponent" not in message, message


@given(
    chars=st.text("0123456789abcdefghijklmnopqrstuvwxyz.-", min_size=1, max_size=30),
    negate=st.booleans(),
)
def test_a_character_class_is_one_character_however_many_it_lists(chars: str, negate: bool) -> None:
    """'llama3.[0-9]:*' read as more specific than 'llama3.1:*' (the class's letters counted
    as literal ones), so a rule for every llama3.x beat the one for llama3.1 itself."""
    klass = f"[{'!' if negate else ''}{chars}]"
    assert specificity(f"llama3.{klass}:*") < specificity("llama3.1:*")
    assert specificity(f"llama3.{klass}:*") == specificity("llama3.?:*")
    broad = rule(f"llama3.{klass}:*", id=2, effective_from=date(2026, 12, 1))
    narrow = rule("llama3.1:*", id=1)
    if broad.matches("llama3.1:8b"):
        assert select_rule([broad, narrow], "llama3.1:8b", date(2026, 12, 2)) is narrow
