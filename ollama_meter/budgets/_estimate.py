"""The most a call can cost, known before it runs: what a hard budget reserves and admits on.

A bound, not a guess from history. The prompt cannot count more tokens than it
has bytes (every tokenizer Ollama runs maps at least one byte to a token), plus
what the model's template adds; the reply cannot count more tokens than the
``num_predict``/``max_tokens`` the caller set, or the cap the meter imposes when
the caller set none. Token prices, fees and per-request charges are therefore
bounded exactly. Time-priced parts (GPU-hours, energy) depend on how fast the
server runs: they are bounded with the slowest per-token time seen recently, or
conservative defaults, which is as close to a bound as time allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ollama_meter.pricing import PriceBook
from ollama_meter.records import PastCall, Usage

TEMPLATE_TOKENS = 32
"""Tokens a model's chat template may add to any request (Llama 3's adds about ten)."""
MESSAGE_TOKENS = 8
"""Tokens each chat message's role markers may add."""
IMAGE_TOKENS = 4096
"""Tokens one image may count as (vision models use a few hundred to a few thousand)."""

DEFAULT_PROMPT_NS_PER_TOKEN = 2_000_000
DEFAULT_EVAL_NS_PER_TOKEN = 50_000_000
DEFAULT_LOAD_NS = 60_000_000_000
HISTORY_MARGIN = 3
"""Per-token times seen recently are scaled by 3/2 for the bound."""


@dataclass(frozen=True, slots=True)
class CallBound:
    """The most tokens a call can count, in and out."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a call can cost (integer micro-units of ``currency``)."""

    amount: int
    currency: str


def _slowest(history: Sequence[PastCall], ns: str, count: str, default: int) -> int:
    rates = [getattr(c, ns) // getattr(c, count) for c in history if getattr(c, count) > 0]
    return max(rates) * HISTORY_MARGIN // 2 if rates else default


def bound_cost(
    book: PriceBook, model: str, when: datetime, bound: CallBound, history: Sequence[PastCall]
) -> Estimate:
    """What a call within ``bound`` can cost at most under the rule in force for ``model``."""
    prompt_ns = _slowest(history, "prompt_eval_ns", "input_tokens", DEFAULT_PROMPT_NS_PER_TOKEN)
    eval_ns = _slowest(history, "eval_ns", "output_tokens", DEFAULT_EVAL_NS_PER_TOKEN)
    loads = [c.load_ns for c in history]
    load_ns = max(loads) * HISTORY_MARGIN // 2 if loads else DEFAULT_LOAD_NS
    cost = book.cost(
        model,
        when,
        Usage(
            input_tokens=bound.input_tokens,
            output_tokens=bound.output_tokens,
            prompt_eval_ns=bound.input_tokens * prompt_ns,
            eval_ns=bound.output_tokens * eval_ns,
            load_ns=load_ns,
        ),
    )
    return Estimate(cost.total, cost.currency)
