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

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from ollama_meter._names import model_cache_key
from ollama_meter.ledger import COLD_LOAD_NS
from ollama_meter.pricing import PriceBook, compute_cost
from ollama_meter.records import (
    MAX_DURATION_NS,
    MAX_TOKENS,
    PastCall,
    SpanRecord,
    Usage,
    model_key,
)

log = logging.getLogger("ollama_meter.meter")

TEMPLATE_TOKENS = 32
"""Tokens a model's chat template may add to any request (Llama 3's adds about ten)."""
MESSAGE_TOKENS = 8
"""Tokens each chat message's role markers may add."""
IMAGE_TOKENS = 4096
"""Tokens one image may count as (vision models use a few hundred to a few thousand)."""
IMAGE_TOKENS_SEEN = 256
"""About what a vision model counts of a picture in its prompt (Gemma 3: 256; LLaVA: 576;
Qwen2.5-VL: by its size; Llama 3.2 Vision: a few): what a tpm counts of one at admission, and
what an estimated prompt counts of one."""
SECOND_PASS_TOKENS = 64
"""What Ollama writes into a second pass's prompt beyond the thinking and the role markers of
the message holding it (gpt-oss's switch to its final channel, 52 bytes)."""
PRINT_BYTES = 32
"""What one action of a model's template that prints no request text may write (a role, a
date, a number, the punctuation Go writes around a tool or a call it prints whole): here, not
in :mod:`~ollama_meter.budgets._template`, so the meter reads it without loading that reader."""

DEFAULT_PROMPT_NS_PER_TOKEN = 2_000_000
DEFAULT_EVAL_NS_PER_TOKEN = 50_000_000
DEFAULT_LOAD_NS = 60_000_000_000
HISTORY_MARGIN = 3
"""Per-token times seen recently are scaled by 3/2 for the bound."""
MODELS_LEARNED = 1000
"""Models whose own prompt a process keeps learned (more than a fleet serves): past it, the one
no call asked for the longest goes. Only a server reporting too many tokens for every name
sent gets near it: spellings of one model are one (:func:`~ollama_meter.records.model_key`)."""
MAX_HIDDEN_PROMPT = 32_768
"""The most prompt tokens a model's template may add on its own (a Modelfile ``SYSTEM``):
a count further past a call's bound is a server's error, not a prompt to budget for."""


@dataclass(frozen=True, slots=True)
class CallBound:
    """The most tokens a call can count, in and out."""

    input_tokens: int
    output_tokens: int
    hidden: int = 0
    """Of ``input_tokens``, the prompt the model's template adds, learned from earlier calls."""
    passes: int = 1
    """2: Ollama may run the call twice and report the second pass only (a thinking model's
    chat with a ``format``): the bounds are the second pass's, the call may take as long
    again before it, and its thinking's generation is charged (:func:`bound_cost`)."""
    media: bool = False
    """Whether pictures or sounds are in ``input_tokens``: a refusal names them (a picture
    may count thousands of tokens, more than any prompt or reply cap beside it)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a call can cost (integer micro-units of ``currency``)."""

    amount: int
    currency: str
    busy_ns: int | None = None
    """The busy time the amount pays for, when the price counts time (GPU-hours, energy);
    None: time costs nothing. A call cut short is charged at most this much of it."""
    wait_ns: int | None = None
    """How long the call may run, when time is priced: ``busy_ns`` plus a model load, priced
    or not (a cold model takes that long before it works). A call still running then is cut
    (:class:`~ollama_meter.errors.OverCap`): a server slower than its history cannot spend
    past the bound."""
    replies: bool = True
    """Whether the bound holds reply tokens: a refusal names a smaller reply cap only then (an
    embedding, or a call capped at 0, can only send less)."""
    media: bool = False
    """Whether the bound holds pictures or sounds (:attr:`CallBound.media`)."""
    usage: Usage | None = None
    """What ``amount`` prices (durations only where time is priced): a call whose process
    died before it ended is charged this, since what Ollama did with it is unknown."""

    @property
    def hint(self) -> str:
        """What a refused caller can change to fit: the reply's cap where the bound holds a
        reply, else its input; its pictures and sounds where it has any."""
        media = "fewer or smaller pictures or sounds, " if self.media else ""
        if not self.replies:
            return f"; send less input ({media}a shorter prompt, fewer or shorter texts) to fit"
        cap = "set a smaller reply cap (num_predict, max_tokens, max_output_tokens)"
        if media:
            return f"; {cap}, send {media}or a shorter prompt to fit"
        return f"; {cap} or a shorter prompt to fit"


def _slowest(values: Sequence[int], default: int) -> int:
    """The slowest of ``values``, at most twice the next slowest, with the margin.

    One answer alone cannot set it: a server that once reported a day for a few tokens
    would otherwise bound every later call by that day, refuse them all, and so never
    let a faster call into the history. A single value is weighed against ``default``.
    """
    if not values:
        return default
    ordered = sorted([*values, default] if len(values) == 1 else values)
    return min(ordered[-1], ordered[-2] * 2) * HISTORY_MARGIN // 2


def _rates(history: Sequence[PastCall], ns: str, count: str) -> list[int]:
    """Per-token times of the calls that measured one. A duration of 0 measured nothing:
    Ollama reports no prompt time for an embedding, and a whole answer the meter timed
    itself is all generation; read as 0 ns a token, one such call bounded the model's next
    calls by no time at all, and the time cut stopped them after a model load's wait."""
    return [
        getattr(c, ns) // getattr(c, count)
        for c in history
        if getattr(c, count) > 0 and getattr(c, ns) > 0
    ]


def bound_cost(
    book: PriceBook, model: str, when: datetime, bound: CallBound, history: Sequence[PastCall]
) -> Estimate:
    """What a call within ``bound`` can cost at most under the rule in force for ``model``.

    No span counts more than the ledger stores for one call (``MAX_TOKENS`` tokens each way,
    ``MAX_DURATION_NS`` each duration), so neither does the bound: a cap of 10^400 tokens is
    a call that may cost what the most a span can say costs, not a number no one can write.
    """
    prompt_ns = _slowest(
        _rates(history, "prompt_eval_ns", "input_tokens"), DEFAULT_PROMPT_NS_PER_TOKEN
    )
    eval_ns = _slowest(_rates(history, "eval_ns", "output_tokens"), DEFAULT_EVAL_NS_PER_TOKEN)
    # Warm calls say nothing of how long a load takes, and any call may find the model
    # unloaded (idle past its keep_alive, or evicted by another): only cold loads count.
    load_ns = _slowest([c.load_ns for c in history if c.load_ns >= COLD_LOAD_NS], DEFAULT_LOAD_NS)
    inputs = min(bound.input_tokens, MAX_TOKENS)
    outputs = min(bound.output_tokens, MAX_TOKENS)
    usage = Usage(
        input_tokens=inputs,
        output_tokens=outputs,
        prompt_eval_ns=min(inputs * prompt_ns, MAX_DURATION_NS),
        eval_ns=min(outputs * eval_ns, MAX_DURATION_NS),
        load_ns=min(load_ns, MAX_DURATION_NS),
    )
    # A first pass nobody reports (thinking, then cancelled) runs before the one Ollama
    # reports: its thinking, up to the cap, is charged as the generation the meter saw
    # (``meter/_passes.py``), so the bound pays for it too.
    charged = Usage(
        inputs,
        outputs,
        usage.prompt_eval_ns,
        min(usage.eval_ns * bound.passes, MAX_DURATION_NS),
        usage.load_ns,
    )
    rule = book.rule_for(model, when)
    cost = compute_cost(rule, charged, currency=book.currency)
    priced_time, priced_load = book.timed(rule)
    if not priced_time:  # no time cap
        tokens = Usage(inputs, outputs)
        return Estimate(
            cost.total, cost.currency, replies=outputs > 0, media=bound.media, usage=tokens
        )
    # A call cut short is charged its wall time as busy time (no load apart), at most the
    # time the bound pays for (load included only if priced).
    paid = charged.busy_ns(charge_load=priced_load)
    # The first pass may take as long as the second's work again (its prompt, its thinking):
    # the call's wall time holds that, its price only the thinking.
    unreported = (bound.passes - 1) * usage.busy_ns(charge_load=False)
    waits = usage.busy_ns(charge_load=True) + unreported
    return Estimate(
        cost.total,
        cost.currency,
        paid,
        waits,
        replies=outputs > 0,
        media=bound.media,
        usage=charged,
    )


class HiddenPrompts:
    """The prompt each model's template adds on its own (a Modelfile ``SYSTEM``), which no
    request sends, learned from calls that counted past their bound.

    A call past its bound shows at most how many tokens the model added; once two calls in a
    row show it, later bounds add the smaller of the two (at most :data:`MAX_HIDDEN_PROMPT`).
    One answer alone never raises them: a server that once reports a wild count would
    otherwise have every later call to the model refused, and a refused call never shows
    the count was wrong."""

    def __init__(self) -> None:
        # By the model Ollama runs, not the name as spelled: a caller may spell one model a new
        # way each call (case, the default registry), and each spelling was an entry.
        self._learned: OrderedDict[str | bytes, int] = OrderedDict()
        """Oldest use first: an entry read moves to the end (without a moment out of it)."""
        self._shown: OrderedDict[str | bytes, int] = OrderedDict()
        """What the model's last call past its bound showed, until another agrees (oldest first)."""

    def added(self, model: str, bound: CallBound, shown: int | None = None) -> CallBound:
        """``bound`` with the prompt ``model`` is known to add: ``shown`` by its servers
        (:class:`~ollama_meter.budgets.ShownPrompts`), or more if calls showed more."""
        key = _model(model)
        learned = self._learned.get(key, 0)
        if learned:
            with contextlib.suppress(KeyError):  # gone meanwhile, on another thread
                self._learned.move_to_end(key)  # in use: the last to go
        hidden = max(learned, shown or 0)
        if not hidden:
            return bound
        return replace(bound, input_tokens=bound.input_tokens + hidden, hidden=hidden)

    def observe(self, model: str, counted: int, bound: CallBound) -> int:
        """Learn from a call to ``model`` admitted on ``bound`` that counted ``counted`` prompt
        tokens; the prompt the model is now known to add."""
        key = _model(model)
        learned = self._learned.get(key, 0)
        if counted <= bound.input_tokens:
            return learned
        shown = min(bound.hidden + counted - bound.input_tokens, MAX_HIDDEN_PROMPT)
        before = self._shown.pop(key, None)
        self._shown[key] = shown
        while len(self._shown) > MODELS_LEARNED:  # the oldest goes: a flood of names, cleared
            self._shown.popitem(last=False)  # at once, kept each model from its second call
        if before is not None and min(before, shown) > learned:
            learned = self._learned[key] = min(before, shown)
            self._learned.move_to_end(key)
            while len(self._learned) > MODELS_LEARNED:
                self._learned.popitem(last=False)
        return learned

    def past_bound(self, span: SpanRecord, bound: CallBound) -> None:
        """Ollama counted more than a hard budget admitted the call on: say so, and learn the
        prompt the model may add on its own (see :meth:`observe`). What was counted is
        what was charged: the tokens were processed."""
        if span.input_tokens <= bound.input_tokens and span.output_tokens <= bound.output_tokens:
            return
        model = span.request_model
        learned = self.observe(model, span.input_tokens, bound)
        log.warning(
            "call %s to %s counted %d prompt and %d reply tokens, past the %d and %d its hard "
            "budget admitted it on (a prompt the model's template adds, or a server that "
            "ignores the reply cap); charged as counted; %s",
            span.id,
            model,
            span.input_tokens,
            span.output_tokens,
            bound.input_tokens,
            bound.output_tokens,
            f"later bounds for {model} add {learned} prompt tokens"
            if learned
            else f"if {model}'s next call counts past its bound too, later bounds add the excess",
        )


def _model(name: str) -> str | bytes:
    """The model Ollama runs for ``name``, as a process keeps it."""
    return model_cache_key(model_key(name))
