"""The demo's traffic: a month of plausible calls from several tenants and departments.

Runs the real meter against the in-process Ollama emulator; only the clock is
simulated so the calls spread over the past 30 days.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial

from ollama_meter.config import Settings
from ollama_meter.errors import UpstreamError, ValidationError
from ollama_meter.meter import Attribution, Meter, utc_now
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import DEFAULT_MODELS, REAL_TIME, Fault, OllamaEmulator, at_real_time

TEAMS = {
    "acme": {
        "sales": ["alice", "bob"],
        "support": ["carol", "dan"],
        "engineering": ["erin", "frank"],
    },
    "globex": {"research": ["grace", "heidi"], "marketing": ["ivan"]},
}
MODELS = ["llama3.1:8b", "llama3.1:8b", "qwen2.5:7b", "mistral:7b"]
PROMPTS = [
    "Summarise this customer email in three bullet points",
    "Draft a polite reply declining the meeting",
    "Explain the difference between a mutex and a semaphore",
    "Write a SQL query that lists overdue invoices by customer",
    "Translate the product description into German",
    "Give me five subject lines for the spring campaign",
    "What are the main risks in this vendor contract",
    "Classify this support ticket as billing, bug or question",
]


def demo_prices(currency: str) -> list[PriceRule]:
    """On-prem compute and energy for the local models, a token price for one of them."""
    rule = partial(PriceRule, currency=currency, source="demo")
    return [
        rule(
            pattern="llama3.1:*",
            gpu_hour=Decimal("2.40"),
            watts=Decimal(350),
            kwh_price=Decimal("0.30"),
        ),
        rule(pattern="qwen2.5:*", input_per_1m=Decimal("0.20"), output_per_1m=Decimal("0.80")),
        rule(pattern="mistral:*", gpu_hour=Decimal("1.80"), charge_load=True),
    ]


DEMO_SPEEDUP = 20
"""The demo's emulated GPU runs its models this many times faster than a real one (and
spends the time it reports): a month of calls in seconds, GPU time and its cost a twentieth of a
GPU's, where the tests' emulator is 400 times faster."""


@dataclass
class DemoSummary:
    calls: int
    ok: int
    errors: int
    upstream: str
    first_day: date


class _Clock:
    """The simulated start time of the call being made."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now


def _refuse_a_ledger_in_use(meter: Meter) -> None:
    """The demo's rules would price real calls and its calls count against real budgets."""
    ledger = meter.ledger
    rules = ledger.price_rules()
    ours = any(rule.source == "demo" for rule in rules)
    by_hand = any(r.source == "cli" for r in rules) or any(
        b.source == "cli" for b in ledger.budgets()
    )
    if by_hand or ledger.keys() or (not ours and ledger.count() > 0):
        raise ValidationError(
            f"{ledger.display_url} is a ledger in use (price rules, budgets or calls of its "
            "own); ometer demo fills only a new ledger or one it made: leave out --db for the "
            "separate demo ledger"
        )


KEPT_SETTINGS = frozenset(
    {"db_url", "timezone", "currency", "log_level", "log_format", "ledger_wait", "journal"}
)
"""What the demo takes of the install it runs on: where its ledger is, the zone its days are
cut in, the currency it prices in, and how it logs and waits. Every other setting is its
default, so the install's budgets (``DEPARTMENT_BUDGETS``), price file, alert channels,
exporters (OTLP, Langfuse, Traceloop) and retention never meet the demo's fake calls."""


def demo_settings(cfg: Settings, upstream: str) -> Settings:
    """``cfg`` reduced to :data:`KEPT_SETTINGS`, calling ``upstream`` with no wait between
    retries (the emulator answers at once). Every field is given, so neither the environment
    nor a ``.env`` file adds anything."""
    given = {
        name: getattr(cfg, name)
        if name in KEPT_SETTINGS
        else field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
    }
    return Settings(**{**given, "ollama_host": upstream, "retry_backoff": 0.0})


def run_demo(
    cfg: Settings, *, calls: int, progress: Callable[[], None], seed: int = 7
) -> DemoSummary:
    """Send ``calls`` metered chats to a fresh emulator, recording into ``cfg``'s ledger."""
    rng = random.Random(seed)
    end = utc_now()
    moments = sorted(end - timedelta(seconds=rng.uniform(0, 30 * 86400)) for _ in range(calls))
    clock = _Clock()
    ok = errors = 0
    models = [at_real_time(model, REAL_TIME // DEMO_SPEEDUP) for model in DEFAULT_MODELS]
    with OllamaEmulator(models=models) as emulator:
        demo_cfg = demo_settings(cfg, emulator.url)
        meter = Meter.from_settings(demo_cfg, source="cli", clock=clock)
        _refuse_a_ledger_in_use(meter)
        if not any(rule.source == "demo" for rule in meter.ledger.price_rules()):
            for rule in demo_prices(cfg.currency):
                meter.ledger.add_price_rule(rule)
        for number, moment in enumerate(moments):
            tenant = rng.choice(sorted(TEAMS))
            department = rng.choice(sorted(TEAMS[tenant]))
            user = rng.choice(TEAMS[tenant][department])
            model = rng.choice(MODELS)
            if number % 97 == 50:
                model = "llama3.3:70b"  # not pulled: a model_not_found error
            elif number % 41 == 20:
                emulator.inject(Fault.MIDSTREAM_ERROR)
            elif number % 53 == 30:
                # Failing past every retry: an upstream_5xx error.
                emulator.inject(Fault.HTTP_500, times=demo_cfg.retries + 1)
            clock.now = moment
            run = meter.chat(
                model=model,
                messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
                attribution=Attribution(tenant=tenant, department=department, user=user),
                stream=rng.random() < 0.7,
            )
            try:
                for _ in run:
                    pass
                ok += 1
            except UpstreamError:
                errors += 1
            progress()
        meter.close_upstream()
        return DemoSummary(calls, ok, errors, emulator.url, moments[0].astimezone(cfg.tz).date())
