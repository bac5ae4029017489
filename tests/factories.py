"""Span records and price rules for tests that write the ledger directly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ollama_meter.ledger import Ledger
from ollama_meter.meter import SpanRecord, new_span_row_id
from ollama_meter.pricing import PriceRule
from ollama_meter.records import new_otel_span_id, new_trace_id


def token_prices(pattern: str = "*", **fields: Any) -> PriceRule:
    """The tests' usual token price: 1000 USD per 1M input tokens, 2000 per 1M output."""
    return PriceRule(
        pattern=pattern,
        currency="USD",
        input_per_1m=Decimal(1000),
        output_per_1m=Decimal(2000),
        **fields,
    )


@contextmanager
def opened(url: str, **options: Any) -> Iterator[Ledger]:
    """A ledger disposed of as the block ends: what a property's examples each open. Left to
    the test's end, each example's ledger kept its PostgreSQL sessions, and a failing
    property shrinking through hundreds of examples ran the server out of connections
    ("sorry, too many clients already") under the real failure (tests/test_hygiene.py)."""
    ledger = Ledger(url, **options)
    try:
        yield ledger
    finally:
        ledger.dispose()


def make_span(**fields: Any) -> SpanRecord:
    started = fields.pop("started_at", datetime(2026, 11, 10, 12, 0, tzinfo=UTC))
    values: dict[str, Any] = {
        "id": new_span_row_id(int(started.timestamp() * 1e9)),
        "trace_id": new_trace_id(),
        "span_id": new_otel_span_id(),
        "started_at": started,
        "tenant": "acme",
        "department": "sales",
        "source": "sdk",
        "operation": "chat",
        "upstream_host": "http://127.0.0.1:11434",
        "request_model": "llama3.1:8b",
        "stream": True,
        "currency": "USD",
        "input_tokens": 7,
        "output_tokens": 12,
        "prompt_eval_duration_ns": 1_000_000,
        "eval_duration_ns": 2_000_000,
    }
    values.update(fields)
    if "unpriced" not in fields:
        # A span with a cost or a rule was priced: ometer writes no unpriced span with
        # either (an import refuses one).
        costs = ("cost_tokens", "cost_compute", "cost_energy", "cost_fee", "cost_total")
        values["unpriced"] = not any(values.get(c) for c in costs) and not values.get(
            "price_rule_id"
        )
    return SpanRecord(**values)


def two_currencies(at: datetime) -> list[SpanRecord]:
    """Sales spends 1.25 USD and 0.70 EUR, legal 0.50 EUR: totals 1.20 EUR and 1.25 USD, never 2.45."""
    return [
        make_span(started_at=at, department="sales", cost_total=1_250_000, currency="USD"),
        make_span(started_at=at, department="sales", cost_total=700_000, currency="EUR"),
        make_span(started_at=at, department="legal", cost_total=500_000, currency="EUR"),
    ]


OFFICE_NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
"""The clock of :func:`office_spans`: a Friday afternoon, two thirds into November."""

OFFICE_TEAMS = {
    "acme": {
        "engineering": ["erin", "frank", "gus"],
        "finance": ["fiona"],
        "sales": ["alice", "bob"],
        "support": ["carol", "dan"],
    },
    "globex": {"marketing": ["ivan", "judy"]},
}
# model → (cost per call range in micro-USD, output tokens per second)
OFFICE_MODELS = {
    "llama3.1:70b": ((12_000_000, 70_000_000), 18),
    "llama3.1:8b": ((200_000, 1_600_000), 62),
    "qwen2.5:14b": ((1_500_000, 12_000_000), 35),
    "mistral:7b": ((150_000, 1_300_000), 70),
}


def office_spans(now: datetime = OFFICE_NOW, *, seed: int = 12) -> list[SpanRecord]:
    """Seven weeks of plausible office traffic up to ``now``, from the first of last month.

    Deterministic for a seed. Mostly priced calls in USD; some failures of each
    kind, cold loads, and a few calls of an unpriced model.
    """
    import random
    from datetime import timedelta

    rng = random.Random(seed)
    start = datetime(now.year - (now.month == 1), (now.month - 2) % 12 + 1, 1, tzinfo=UTC)
    seconds = int((now - start).total_seconds())
    spans = []
    for number in range(520):
        at = start + timedelta(seconds=rng.randrange(seconds))
        if at.weekday() >= 5 and rng.random() < 0.7:
            continue  # quiet weekends
        tenant = rng.choice(sorted(OFFICE_TEAMS))
        department = rng.choice(sorted(OFFICE_TEAMS[tenant]))
        user = rng.choice(OFFICE_TEAMS[tenant][department])
        model = rng.choice(sorted(OFFICE_MODELS))
        (low, high), speed = OFFICE_MODELS[model]
        output = rng.randrange(40, 900)
        eval_ns = output * 1_000_000_000 // speed
        load_ns = rng.choice([2_500_000_000, 4_000_000_000]) if number % 37 == 0 else 3_000_000
        ttft = rng.randrange(90, 700) * 1_000_000 + (load_ns if load_ns > 10**9 else 0)
        fields: dict[str, Any] = {
            "started_at": at,
            "tenant": tenant,
            "department": department,
            "user": user,
            "request_model": model,
            "response_model": model,
            "input_tokens": rng.randrange(30, 2400),
            "output_tokens": output,
            "load_duration_ns": load_ns,
            "prompt_eval_duration_ns": rng.randrange(20, 400) * 1_000_000,
            "eval_duration_ns": eval_ns,
            "ttft_ns": ttft,
            "cost_total": rng.randrange(low, high),
            "unpriced": False,
            "price_rule_id": 1,
        }
        fields["total_duration_ns"] = (
            load_ns + fields["prompt_eval_duration_ns"] + eval_ns + rng.randrange(0, 250) * 10**6
        )
        fields["latency_ns"] = fields["total_duration_ns"] + rng.randrange(1, 9) * 10**6
        fields["cost_tokens"] = fields["cost_total"]
        if number % 29 == 3:
            fields.update(
                status="error",
                error_type=rng.choice(["timeout", "upstream_5xx", "model_not_found"]),
                output_tokens=0,
                cost_total=0,
                cost_tokens=0,
                ttft_ns=None,
            )
        elif number % 61 == 7:
            fields.update(
                status="rejected", error_type="budget_exceeded", input_tokens=0, output_tokens=0,
                cost_total=0, cost_tokens=0, latency_ns=1_000_000, ttft_ns=None,
                total_duration_ns=None, eval_duration_ns=None, prompt_eval_duration_ns=None,
                load_duration_ns=None,
            )  # fmt: skip
        elif number % 43 == 11:
            fields.update(
                request_model="phi3:mini", response_model="phi3:mini", cost_total=0,
                cost_tokens=0, unpriced=True, price_rule_id=None,
            )  # fmt: skip
        spans.append(make_span(**fields))
    return spans


def quick_history(model: str = "llama3.1:8b") -> SpanRecord:
    """A call that tells a hard budget's time bound the model is quick: 1 ms a prompt token,
    10 ms a reply token, a cold load of 100 ms (bounds from one call: 3 ms, 30 ms, 0.3 s)."""
    return make_span(
        request_model=model,
        input_tokens=100,
        output_tokens=100,
        prompt_eval_duration_ns=100_000_000,
        eval_duration_ns=1_000_000_000,
        load_duration_ns=100_000_000,
    )


# A tool as Ollama's docs give it, and a question a model answers by calling it.
WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather for a location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
                "required": ["location", "format"],
            },
        },
    }
]
WEATHER_QUESTION = [{"role": "user", "content": "what is the weather in Paris today"}]
