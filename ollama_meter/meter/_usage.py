"""Token counts when Ollama does not give them, and the usage a span is priced on."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ollama_meter._names import model_cache_key
from ollama_meter._reloaded import WouldBlock
from ollama_meter.meter._honest import prompt_at_most, reply_at_most
from ollama_meter.meter._written import bytes_of
from ollama_meter.pricing import usage_of
from ollama_meter.records import TokenSource

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger
    from ollama_meter.meter._call import MeteredCall
    from ollama_meter.records import PastCall
    from ollama_meter.upstream import Final

__all__ = ["RecentCalls", "count_tokens", "estimate_tokens", "tokens_in_chars", "usage_of"]

log = logging.getLogger("ollama_meter.meter")

HISTORY_TTL = 30.0
"""Seconds a model's recent calls are reused for bounding time-priced costs."""

_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough count for text Ollama did not count: about four bytes of UTF-8 a token, which
    is four characters of English, and a character of Chinese or Japanese (three bytes) near
    the token it is; four characters a token charged those a quarter of their tokens."""
    return tokens_in_chars(bytes_of(text))


def tokens_in_chars(chars: int) -> int:
    """:func:`estimate_tokens` of a text ``chars`` characters long."""
    return -(-chars // _CHARS_PER_TOKEN) if chars > 0 else 0


def count_tokens(call: MeteredCall, final: Final | None) -> None:
    """The span's token counts: Ollama's, else estimated; a stream's, at least what it streamed.

    Ollama omits counts that are zero, and a broken stream has no final chunk: then a count
    is estimated from the text, and the span says so. Ollama streams a reply about a token a
    chunk (it may join pieces, never split one), so a stream's pieces are that many tokens
    at least: an upstream (or a proxy before it) that reports fewer was charged what it said
    (``eval_count: 1`` for 1,000 pieces). Such a count is raised to the pieces, and the span
    says ``estimated``. In a chat Ollama may run twice (:attr:`MeteredCall.passes`), the
    thinking streamed first is counted in the second pass's prompt: the reply is at least
    the other pieces, and prompt and reply together at least all of them.

    Under a hard budget no estimate passes what the call was admitted on (the reply's cap,
    the prompt's bound): a stream cut at its cap is charged the cap, what Ollama honouring
    ``num_predict`` would have billed (the piece past it is never relayed), and a server that
    lies cannot move a call's charge past its bound. Counts Ollama reports past the bound are
    charged as reported (``HiddenPrompts.past_bound``): the tokens were processed; a count
    cut as no honest server's (below) is an estimate, charged no more than the bound. A prompt
    count no honest server gives for the request (2 billion tokens for 10 characters) is cut
    to the most it could be (:func:`~._honest.prompt_at_most`), with or without a budget, and
    a reply count no honest server gives for what the answer showed (2 billion tokens for 10
    characters) to the most it could be (:func:`~._honest.reply_at_most`).
    """
    span = call.span
    said_in = final.input_tokens if final is not None else None
    said_out = final.output_tokens if final is not None else None
    counted = None if said_in is None else prompt_at_most(call, said_in)  # what may be true
    told = None if said_out is None else reply_at_most(call, said_out)
    inputs = counted if counted is not None else call.input_estimate
    if told is not None:
        outputs = told
    elif span.stream:
        outputs = call.streamed_tokens
    else:
        outputs = tokens_in_chars(call.reply_chars + call.other_chars)
    if span.stream:
        thought = call.thought_chunks if call.passes > 1 else 0  # may be the prompt's
        outputs = max(outputs, call.content_chunks - thought)
        if call.passes > 1:
            inputs = max(inputs, call.content_chunks - outputs)
    # A count cut as no honest server's is believed no more than an estimate is.
    kept_in, kept_out = (said_in if counted == said_in else 0), (told if told == said_out else 0)
    believed = (counted, told) == (said_in, said_out)
    bound = call.bound
    if bound is not None:  # one long tool call, or lying text, is no hard budget's overshoot
        inputs = min(inputs, max(bound.input_tokens, kept_in or 0))
        if call.output_cap is not None:
            outputs = min(outputs, max(bound.output_tokens, kept_out or 0))
    if said_in is None or said_out is None or not believed:
        span.token_source = TokenSource.ESTIMATED
    if said_in is not None and said_out is not None and (inputs, outputs) != (counted, told):
        span.token_source = TokenSource.ESTIMATED
        if not believed and bound is not None:
            log.warning(
                "call %s to %s was admitted under a hard budget on %d prompt and %d reply "
                "tokens, and its answer's counts were no honest server's: it is charged no "
                "more than it was admitted on, %d and %d",
                span.id,
                span.request_model,
                bound.input_tokens,
                bound.output_tokens,
                inputs,
                outputs,
            )
        else:
            log.warning(
                "call %s to %s streamed %d pieces of reply (%d of them thinking) and reported "
                "%d prompt and %d reply tokens; Ollama streams about a token a piece, so it is "
                "charged %d and %d",
                span.id,
                span.request_model,
                call.content_chunks,
                call.thought_chunks,
                counted,
                told,
                inputs,
                outputs,
            )
    span.input_tokens, span.output_tokens = inputs, outputs


class RecentCalls:
    """Each model's recent calls, for bounding time-priced costs: read at most every
    :data:`HISTORY_TTL` seconds."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._read: dict[str | bytes, tuple[float, list[PastCall]]] = {}

    def of(self, model: str, *, blocking: bool = True) -> list[PastCall]:
        """``model``'s recent calls; :class:`WouldBlock` when they must be read first and
        ``blocking`` is False (an event loop)."""
        now, key = time.monotonic(), model_cache_key(model)
        cached = self._read.get(key)
        if cached is None or now - cached[0] > HISTORY_TTL:
            if not blocking:
                raise WouldBlock(f"the recent calls to {model!r} must be read first")
            if len(self._read) > 1000:
                self._read.clear()
            cached = self._read[key] = (now, self._ledger.recent_usage(model))
        return cached[1]
