"""What a call will probably cost, before it runs, for reserving budget.

Two figures: ``expected``, the best guess (recent calls to the model, or
``num_predict``), which decides admission; and ``ceiling``, a generous bound
that is reserved when room allows, so concurrent calls cannot together
overshoot by more than the guess was wrong for one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ollama_meter.pricing import PriceBook, Usage

DEFAULT_OUTPUT_TOKENS = 256
"""Output assumed for the ceiling when a model has no history and no ``num_predict``."""
DEFAULT_EVAL_NS_PER_TOKEN = 50_000_000
DEFAULT_PROMPT_NS_PER_TOKEN = 2_000_000


@dataclass(frozen=True, slots=True)
class PastCall:
    input_tokens: int
    output_tokens: int
    prompt_eval_ns: int
    eval_ns: int
    load_ns: int


@dataclass(frozen=True, slots=True)
class Estimate:
    expected: int
    ceiling: int
    currency: str


def estimate_cost(
    book: PriceBook,
    model: str,
    when: datetime,
    *,
    input_tokens: int,
    history: Sequence[PastCall],
    num_predict: int | None = None,
) -> Estimate:
    """Expected and ceiling cost (micro-units) of a call with ``input_tokens`` of prompt."""
    expected_in = input_tokens
    if history:
        # The character count over-estimates short prompts; recent calls cap the guess.
        expected_in = min(input_tokens, max(call.input_tokens for call in history))
        out = max(call.output_tokens for call in history)
        prompt_ns = max(call.prompt_eval_ns // max(call.input_tokens, 1) for call in history)
        eval_ns = max(call.eval_ns // max(call.output_tokens, 1) for call in history)
        load_ns = max(call.load_ns for call in history)
        ceiling_out = max(2 * out, out + 32)
    else:
        out, prompt_ns, eval_ns, load_ns = 0, DEFAULT_PROMPT_NS_PER_TOKEN, 0, 0
        ceiling_out = DEFAULT_OUTPUT_TOKENS
    if num_predict is not None and num_predict >= 0:
        out = ceiling_out = num_predict
    ceiling_eval_ns = eval_ns or DEFAULT_EVAL_NS_PER_TOKEN

    def usage(prompt: int, output: int, per_token_eval: int) -> Usage:
        return Usage(
            input_tokens=prompt,
            output_tokens=output,
            prompt_eval_ns=prompt * prompt_ns,
            eval_ns=output * per_token_eval,
            load_ns=load_ns,
        )

    expected = book.cost(model, when, usage(expected_in, out, eval_ns))
    ceiling = book.cost(model, when, usage(input_tokens, ceiling_out, ceiling_eval_ns))
    return Estimate(expected.total, max(ceiling.total, expected.total), expected.currency)
