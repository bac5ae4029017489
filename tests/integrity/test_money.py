"""Money and budgets: bounded inputs, admission on a call's own bound, one currency per budget."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import Budget, CallBound, bound_cost
from ollama_meter.config import load_settings
from ollama_meter.errors import BudgetError, BudgetExceeded, PricingError
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.meter import Attribution, Meter, usage_of
from ollama_meter.meter._request import facts_of
from ollama_meter.pricing import (
    MAX_AMOUNT,
    MAX_PRICE,
    PRICE_LIMITS,
    PriceBook,
    PriceRule,
    Usage,
    compute_cost,
)
from ollama_meter.records import MAX_CALL_COST, parse_amount, parse_department_budgets
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.factories import token_prices

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
INT64 = 2**63 - 1

prices = st.decimals(min_value=0, max_value=MAX_PRICE, allow_nan=False, places=6)
watts_ = st.decimals(min_value=0, max_value=PRICE_LIMITS["watts"], allow_nan=False, places=3)
kwh_ = st.decimals(min_value=0, max_value=PRICE_LIMITS["kwh_price"], allow_nan=False, places=6)


@settings(max_examples=300, deadline=None)
@given(
    input_per_1m=prices,
    output_per_1m=prices,
    gpu_hour=prices,
    watts=watts_,
    kwh_price=kwh_,
    per_request=prices,
    fee_per_1m=prices,
    tokens_in=st.integers(0, 2**31 - 1),
    tokens_out=st.integers(0, 2**31 - 1),
    ns=st.tuples(*[st.integers(0, 10**15)] * 3),
)
def test_the_most_any_call_can_cost_fits_the_ledger(
    input_per_1m: Decimal,
    output_per_1m: Decimal,
    gpu_hour: Decimal,
    watts: Decimal,
    kwh_price: Decimal,
    per_request: Decimal,
    fee_per_1m: Decimal,
    tokens_in: int,
    tokens_out: int,
    ns: tuple[int, int, int],
) -> None:
    """Every price within bounds, every count and duration a span can hold: the cost fits
    a 64-bit column with room for a thousand of the worst such calls to be summed."""
    rule = PriceRule(
        pattern="*",
        currency="USD",
        id=1,
        input_per_1m=input_per_1m,
        output_per_1m=output_per_1m,
        gpu_hour=gpu_hour,
        watts=watts,
        kwh_price=kwh_price,
        per_request=per_request,
        fee_per_1m=fee_per_1m,
        charge_load=True,
    )
    usage = Usage(tokens_in, tokens_out, *ns)
    cost = compute_cost(rule, usage, currency="USD")
    assert 0 <= cost.total <= MAX_CALL_COST == INT64 // 1000
    assert cost.total == cost.tokens + cost.compute + cost.energy + cost.fee


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["pricing", "set", "m", "--input-per-1m", "1e30"], "more than the largest allowed"),
        (["pricing", "set", "m", "--gpu-hour", "inf"], "not a finite number"),
        (
            ["pricing", "set", "m", "--watts", "300", "--kwh-price", "5000"],
            "largest allowed, 1,000",
        ),
        (["pricing", "set", "m", "--per-request", "-1"], "must not be negative"),
        (["pricing", "set", "m", "--per-request", "1", "--currency", "dollars"], "ISO 4217"),
        (["budget", "set", "d", "--monthly", "1e30"], "more than the largest allowed"),
        (["budget", "set", "d", "--monthly", "0"], "must be more than 0"),
        (["budget", "set", "d", "--daily", "NaN"], "not a finite number"),
        (["budget", "set", "d", "--daily", "0.0000015"], "more than 6 decimal places"),
        (["chargeback", "--month", "2026-11", "--fixed-cost", "1e30"], "largest allowed"),
        (["chargeback", "--month", "2026-11", "--fixed-cost", "0." + "0" * 60 + "1"], "digits"),
        (["chargeback", "--month", "2026-11", "--fixed-cost", "12.345"], "more than 2 decimal"),
    ],
)
def test_absurd_amounts_are_one_line_errors(cli: Any, args: list[str], says: str) -> None:
    result = cli(*args)
    assert result.code in (1, 2)
    (line,) = [line for line in result.stderr.splitlines() if "ollama_meter.ledger" not in line]
    assert line.startswith("error: ") and says in line  # one line, no traceback


def test_a_fixed_cost_finer_than_cents_is_named_where_it_was_set(
    cli: Any, monkeypatch: Any
) -> None:
    """Shares are whole cents: 0.001 is refused, as the setting it came from, before any work."""
    monkeypatch.setenv("OMETER_FIXED_MONTHLY_COST", "0.001")
    result = cli("chargeback", "--month", "2026-11")
    assert result.code == 2
    assert result.stderr.strip() == (
        "error: OMETER_FIXED_MONTHLY_COST: the value 0.001 has more than 2 decimal places"
    )


def test_largest_amounts_are_accepted(cli: Any) -> None:
    assert cli("pricing", "set", "m", "--input-per-1m", str(MAX_PRICE)).code == 0
    assert cli("budget", "set", "d", "--monthly", str(MAX_AMOUNT)).code == 0
    assert cli("chargeback", "--month", "2026-11", "--fixed-cost", str(MAX_AMOUNT)).code == 0


# -- the bound ------------------------------------------------------------------------------

WORDS = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda t: t.strip()
)


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(WORDS, min_size=1, max_size=6),
    num_predict=st.one_of(st.none(), st.integers(0, 400)),
)
def test_the_bound_is_never_below_what_the_call_costs(
    messages: list[str], num_predict: int | None
) -> None:
    """What the emulator (counting like a tokenizer never counts more than bytes) charges
    for any chat is at most what the meter reserved for it."""
    chat = [{"role": "user", "content": m} for m in messages]
    options = {"num_predict": num_predict} if num_predict is not None else None
    body = {"model": "llama3.1:8b", "messages": chat, "options": options}
    facts = facts_of("chat", body)
    limits = facts.bound(default_output=64)
    actual_in, actual_out = expected_counts("llama3.1:8b", chat, options)
    if num_predict is None:
        actual_out = min(actual_out, 64)  # the cap the meter imposes then
    assert actual_in <= limits.input_tokens and actual_out <= limits.output_tokens
    book = PriceBook(
        [token_prices(id=1)], tz=__import__("zoneinfo").ZoneInfo("UTC"), currency="USD"
    )
    actual = book.cost("llama3.1:8b", NOV, Usage(actual_in, actual_out))
    assert actual.total <= bound_cost(book, "llama3.1:8b", NOV, limits, []).amount


def test_openai_and_generate_bodies_are_bounded_too() -> None:
    chat = facts_of(
        "openai.chat",
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "héllo"},
                                                       {"type": "image_url"}]}],
            "max_completion_tokens": 7,
        },
    )  # fmt: skip
    assert (chat.prompt_bytes, chat.images, chat.max_output) == (6, 1, 7)
    tokens = facts_of("openai.embeddings", {"input": [[1, 2, 3], [4]]})
    # Two inputs, each tokenized apart with its own special tokens (8 each at most).
    assert tokens.given_tokens == 4 and tokens.bound(99) == CallBound(4 + 2 * 8 + 32, 0)
    generate = facts_of(
        "generate", {"prompt": "a b", "system": "s", "context": [1] * 10, "options": {"num_ctx": 9}}
    )
    assert generate.bound(4096) == CallBound(3 + 1 + 10 + 32, 9)
    hostile = facts_of("chat", {"messages": "not a list", "options": {"num_predict": "lots"}})
    assert hostile.bound(5) == CallBound(32, 5)


# -- admission against the emulator -------------------------------------------------------------


def make_meter(db_url: str, **overrides: Any) -> Meter:
    cfg = load_settings(db_url=db_url, timezone="UTC", **overrides)
    meter = Meter.from_settings(cfg, source="sdk", clock=lambda: NOV)
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    return meter


def cap(meter: Meter, limit: int, **kw: Any) -> None:
    values: dict[str, Any] = {"tenant": "acme", "department": "sales", "period": "month"}
    meter.ledger.save_budget(Budget(limit=limit, currency="USD", **{**values, **kw}))
    assert meter.budgets is not None
    meter.budgets.reload_soon()


def chat(meter: Meter, text: str, **options: Any) -> Any:
    run = meter.chat(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": text}],
        attribution=Attribution(tenant="acme", department="sales"),
        options=options or None,
        stream=False,
    )
    list(run)
    return run.span


def test_one_huge_prompt_cannot_overshoot(sqlite_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(sqlite_url)
    cap(meter, 1_000_000)  # 1.00 USD
    chat(meter, "hi", num_predict=5)  # one small call in history
    sent = len(emulator.requests)
    huge = " ".join(["word"] * 200_000)
    with pytest.raises(BudgetExceeded, match="may cost up to") as refused:
        chat(meter, huge, num_predict=5)
    assert len(emulator.requests) == sent  # Ollama never saw it
    assert refused.value.retry_after > 3600  # it will not fit before the period ends


def test_first_call_with_no_history_is_bounded_too(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(sqlite_url)
    cap(meter, 50_000)  # 0.05 USD: less than 200 words of prompt could cost
    with pytest.raises(BudgetExceeded):
        chat(meter, " ".join(["word"] * 200), num_predict=1)
    assert emulator.requests_to("/api/chat") == []  # the model was only described (/api/show)
    spans = meter.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.cost_total) for s in spans] == [("rejected", 0)]


def test_a_call_that_sets_no_cap_gets_the_budgets_reply_cap(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(sqlite_url, budget_reply_cap=6)
    cap(meter, 10_000_000)
    span = chat(meter, "tell me everything")
    (request,) = emulator.requests_to("/api/chat")
    assert request.body["options"] == {"num_predict": 6}
    assert span.output_tokens == 6 and span.done_reason == "length"
    # Without a hard budget nothing is capped.
    free = meter.chat(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "tell me everything"}],
        attribution=Attribution(tenant="acme", department="ops"),
        stream=False,
    )
    list(free)
    assert "options" not in emulator.requests[-1].body or not emulator.requests[-1].body.get(
        "options"
    )


def test_fifty_at_once_reserve_a_bound_each_not_the_remainder(
    db_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(db_url)
    text = "hello there friend"
    facts = facts_of("chat", {"messages": [{"role": "user", "content": text}],
                              "options": {"num_predict": 20}})  # fmt: skip
    assert meter.budgets is not None
    bound = bound_cost(meter.prices(), "llama3.1:8b", NOV, facts.bound(20), []).amount
    limit = bound * 10
    cap(meter, limit)
    start = threading.Barrier(50)
    outcomes: list[Any] = []
    decided = threading.Semaphore(0)
    all_decided = threading.Event()

    class InFlightUntilAllAreDecided:
        """Every admitted call stays in flight until all fifty were admitted or refused."""

        def on_start(self, span: Any) -> None:
            decided.release()
            all_decided.wait(timeout=120)  # bounded: a bug fails the count below, never hangs

        def on_end(self, span: Any) -> None:
            pass

    meter.observers.insert(0, InFlightUntilAllAreDecided())

    def one() -> None:
        start.wait()
        try:
            outcomes.append(chat(meter, text, num_predict=20))
        except BudgetExceeded as refused:
            decided.release()
            outcomes.append(refused)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    everyone = all(decided.acquire(timeout=120) for _ in range(50))
    all_decided.set()
    for t in threads:
        t.join()
    admitted = [o for o in outcomes if not isinstance(o, BudgetExceeded)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert everyone and len(outcomes) == 50
    assert len(admitted) == 10  # ten bounds fit at once, and only ten, whatever the timing
    assert sum(s.cost_total for s in admitted) <= limit
    in_flight = [r for r in refused if "calls in flight hold" in str(r)]
    assert in_flight and all(r.retry_after <= 5 for r in in_flight)


# -- one currency ---------------------------------------------------------------------------


def test_a_budget_cannot_be_set_in_a_currency_the_prices_are_not_in(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    ledger.add_price_rule(PriceRule(pattern="*", currency="EUR", input_per_1m=Decimal(1)))
    usd = Budget(tenant="acme", department=None, period="month", limit=10, currency="USD")
    with pytest.raises(BudgetError, match="could not count calls priced in EUR"):
        ledger.save_budget(usd)
    assert ledger.budgets() == []
    eur = ledger.save_budget(
        Budget(tenant="acme", department=None, period="month", limit=10, currency="EUR")
    )
    with pytest.raises(PricingError, match=f"budget\\(s\\) {eur.id} .* count EUR"):
        ledger.add_price_rule(PriceRule(pattern="gpt*", currency="USD", per_request=Decimal(1)))
    # An ended USD rule prices nothing any more: no conflict.
    ended = PriceRule(pattern="old*", currency="USD", per_request=Decimal(1),
                      effective_from=datetime(2020, 1, 1).date(),
                      effective_until=datetime(2020, 2, 1).date())  # fmt: skip
    assert ledger.add_price_rule(ended).id is not None


@pytest.mark.parametrize(
    ("zone", "now", "live"),
    [
        # 20:00 on 31 December in Los Angeles: the rule prices calls for four hours more
        ("America/Los_Angeles", datetime(2027, 1, 1, 4, tzinfo=UTC), True),
        # 01:00 on 1 January in Auckland: the rule has priced its last call
        ("Pacific/Auckland", datetime(2026, 12, 31, 12, tzinfo=UTC), False),
    ],
)
def test_a_rule_prices_calls_until_the_ledgers_midnight_and_is_checked_until_then(
    tmp_path: Any, zone: str, now: datetime, live: bool
) -> None:
    """A rule's dates begin at the ledger's midnights; whether it can still price a call was
    read from the UTC date: a budget in another currency was let in hours before the rule
    ended (its calls then refused as priced in a currency the budget does not count), and
    refused hours after."""
    from ollama_meter.ledger._currencies import check_budgets

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", zone=zone)
    ending = PriceRule(pattern="*", currency="EUR", input_per_1m=Decimal(1),
                       effective_until=datetime(2027, 1, 1).date())  # fmt: skip
    ledger.add_price_rule(ending)
    usd = Budget(tenant="acme", department=None, period="month", limit=10, currency="USD")
    with ledger.write() as conn:
        if live:
            with pytest.raises(BudgetError, match="could not count calls priced in EUR"):
                check_budgets(conn, [usd], now=now)
        else:
            check_budgets(conn, [usd], now=now)


def test_the_readme_toml_and_env_budgets_agree_or_say_why(
    cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text('currency = "EUR"\n[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 1\n')
    monkeypatch.setenv("OMETER_PRICING_FILE", str(toml))
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"monthly": 100}}')
    wrong = cli("budget", "status")
    assert wrong.code == 1 and "USD budget" in wrong.stderr and "OMETER_CURRENCY" in wrong.stderr
    monkeypatch.setenv("OMETER_CURRENCY", "EUR")
    assert cli("budget", "status").code == 0
    toml.write_text('currency = "usd "\n[[rule]]\nmodel = "x"\nper_request = 1\n')
    assert "count EUR" in cli("pricing", "list").stderr
    toml.write_text('currency = "US"\n[[rule]]\nmodel = "x"\nper_request = 1\n')
    assert "ISO 4217" in cli("pricing", "list").stderr


def test_pricing_import_twice_adds_nothing(cli: Any, tmp_path: Any) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        '[[rule]]\nmodel = "a:*"\ninput_per_1m = "1.50"\n'
        '[[rule]]\nmodel = "b:*"\ngpu_hour = 2\nfrom = 2026-01-01\n'
    )
    assert "imported 2 new rule(s)" in cli("pricing", "import", str(toml)).stdout
    toml.write_text(
        '[[rule]]\nmodel = "a:*"\ninput_per_1m = 1.5\n'  # the same price, written another way
        '[[rule]]\nmodel = "b:*"\ngpu_hour = 2\nfrom = 2026-01-01\n'
        '[[rule]]\nmodel = "c:*"\nper_request = 1\n'
    )
    assert "imported 1 new rule(s)" in cli("pricing", "import", str(toml)).stdout
    assert "(already there)" in cli("pricing", "set", "c:*", "--per-request", "1").stdout
    import json

    assert len(json.loads(cli("pricing", "list", "--json").stdout)) == 3


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=12))
@example(text="Aß")  # upper-cased, three letters: 'ASS'
def test_currency_codes_have_the_iso_shape(text: str) -> None:
    from ollama_meter.pricing import parse_currency

    if len(text.strip()) == 3 and text.strip().isascii() and text.strip().isalpha():
        assert parse_currency(text) == text.strip().upper()
    else:
        with pytest.raises(ValueError, match="ISO 4217"):
            parse_currency(text)


@pytest.mark.parametrize(
    "where",
    [
        ["pricing", "set", "m", "--per-request", "1", "--currency", "UDS"],
        ["budget", "set", "d", "--tenant", "acme", "--monthly", "5", "--currency", "XXX"],
        ["pricing", "import", "prices.toml"],
        ["report"],
    ],
)
def test_a_currency_no_one_uses_is_refused_where_it_is_typed(
    cli: Any, tmp_path: Any, monkeypatch: Any, where: list[str]
) -> None:
    """'UDS' for USD became its own currency: rows of its own in every report, a budget in USD
    blind to it. Codes ISO 4217 lists are taken (not XXX, 'no currency', or XTS, for tests)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prices.toml").write_text('currency = "ABC"\n[[rule]]\nmodel = "m"\ngpu_hour = 1\n')
    if where == ["report"]:
        monkeypatch.setenv("OMETER_CURRENCY", "UDS")
    result = cli(*where)
    assert result.code in (1, 2)
    line = [line for line in result.stderr.splitlines() if "ollama_meter.ledger" not in line]
    assert len(line) == 1 and "is not a currency in ISO 4217" in line[0], result.stderr
    for code in ("usd", "EUR", "CHF", "JPY", "XOF"):
        assert cli("pricing", "set", "m", "--gpu-hour", "1", "--currency", code).code == 0


def test_usage_of_an_interrupted_span_has_no_fee() -> None:
    """Unless a hard budget bounded it: then it is charged the bound, reply and fee with it
    (``tests/budgets/test_killed_mid_reply.py``)."""
    from tests.factories import make_span

    unknown = {"prompt_eval_duration_ns": None, "eval_duration_ns": None}
    span = make_span(status="interrupted", input_tokens=10, output_tokens=0, **unknown)
    assert usage_of(span).answered is False
    bounded = make_span(status="interrupted", input_tokens=10, output_tokens=64, **unknown)
    assert usage_of(bounded).answered is True


@given(
    digits=st.integers(min_value=1, max_value=999_999),
    zeros=st.integers(min_value=6, max_value=30),
)
def test_an_amount_with_too_many_places_is_named_as_written(digits: int, zeros: int) -> None:
    """DEPARTMENT_BUDGETS reads 0.0000001 exactly, as a Decimal that prints as 1E-7: the error
    named a number the user never wrote."""
    written = "0." + "0" * zeros + str(digits)
    for value in (written, Decimal(written)):
        with pytest.raises(ValueError) as raised:
            parse_amount(value, what="'sales' daily", places=6, positive=True)
        assert str(raised.value) == f"'sales' daily {written} has more than 6 decimal places"
    budgets = f'{{"sales": {{"daily": {written}}}}}'
    with pytest.raises(ValueError, match=f"'sales' daily {written} has more than 6"):
        parse_department_budgets(budgets, currency="USD")
