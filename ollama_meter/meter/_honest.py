"""What an answer may honestly say of a call: figures no honest Ollama reports are cut.

Ollama's final chunk says how long the call took at Ollama and how many tokens it counted,
and the call is priced on them. An upstream that lies (or a proxy that garbles them) could
charge a 10-character prompt two billion tokens, or a 10 ms call 11.6 days of GPU time. What
the meter itself saw bounds both: the call's latency bounds every duration, and the request's
own bytes (and the most a model may add to them) bound its prompt, and what the answer shows
(and the most a model generates and Ollama does not show) bounds its reply. A figure past its
bound is cut to it, the span says ``estimated`` (for tokens), and a ``WARNING`` names what was
cut.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT
from ollama_meter.meter._media import PICTURE_TOKENS, PIXELS_A_TOKEN

if TYPE_CHECKING:
    from ollama_meter.meter._call import MeteredCall
    from ollama_meter.records import SpanRecord

log = logging.getLogger("ollama_meter.meter")

MAX_HIDDEN_REPLY = MAX_HIDDEN_PROMPT
"""The most reply tokens an honest Ollama generates and does not show: the end-of-sequence
token, the markers a template's parser strips (a thinking block's tags, a tool call's
wrapper, gpt-oss's channels), the stop sequence it cuts off. Each is a few tokens; a stop
sequence is as long as the request sets it, so the room is the prompt's (32,768)."""

UTF8_MOST = 4
"""The most bytes UTF-8 writes a character in: what a character of thinking or of a tool
call's JSON (as the meter reads them, in characters) may be at most as tokens. For a tool
call it is room too for the spaces and newlines the model wrote and parsing dropped."""


def prompt_at_most(call: MeteredCall, said: int) -> int:
    """The prompt tokens ``call`` is charged when Ollama said ``said``: ``said``, unless no
    honest server counts that many for the request (``RequestFacts.prompt_most``), where
    it is that most.

    An honest count is never cut: the bound is the request's bytes (no tokenizer Ollama
    runs makes a token of less than a byte) and tokens sent as numbers, each message's role
    markers and the template's own text, plus :data:`MAX_HIDDEN_PROMPT` for what the model
    adds on its own (a Modelfile's ``SYSTEM`` and ``MESSAGE`` lines, a template's tool
    instructions), or what its servers said they add, if more; and for each still picture
    :data:`~._media.PICTURE_TOKENS` (twice what any vision model counts of one) and a token
    a :data:`~._media.PIXELS_A_TOKEN` of its pixels past that. A request nothing bounds
    (a video where a picture goes, a chat Ollama runs twice) is charged what was said."""
    if said <= MAX_HIDDEN_PROMPT:  # within every request's bound: nothing to read
        return said
    most = call.prompt_most(said)
    if most is None:
        return said
    if call.bound is not None:  # what its servers said the model adds (``/api/show``)
        most = max(most, call.bound.input_tokens)
    if said <= most:
        return said
    span = call.span
    log.warning(
        "call %s to %s reported %d prompt tokens for a request that can count at most %d "
        "(its bytes, its messages' markers, %sand %d for what a model adds on its own); "
        "no honest server counts more, so it is charged %d",
        span.id,
        span.request_model,
        said,
        most,
        _pictures(call.pictures),
        MAX_HIDDEN_PROMPT,
        most,
    )
    return most


def _pictures(count: int) -> str:
    """What the prompt bound gives the request's pictures, in words."""
    if not count:
        return ""
    plural = "s" if count > 1 else ""
    each = f"{PICTURE_TOKENS:,} tokens each, and past that a token per {PIXELS_A_TOKEN} pixels"
    return f"{count} picture{plural} ({each}), "


def reply_at_most(call: MeteredCall, said: int) -> int:
    """The reply tokens ``call`` is charged when Ollama said ``said``: ``said``, unless no
    honest server generates that many for what its answer showed, where it is that most.

    An honest count is never cut: no tokenizer Ollama runs makes a token of less than a byte,
    and what a model generates Ollama shows, as the reply's text, its thinking, or its tool
    calls (each character of the last two :data:`UTF8_MOST` bytes at most), but for
    :data:`MAX_HIDDEN_REPLY`. A call opened without its request (a library caller's own
    ``Opening``, which may observe the usage alone) is charged what was said."""
    if said <= MAX_HIDDEN_REPLY or not call.reads_answer():
        return said
    most = call.shown_bytes + MAX_HIDDEN_REPLY
    if said <= most:
        return said
    log.warning(
        "call %s to %s reported %d reply tokens for an answer that shows %d bytes of text, "
        "thinking and tool calls; no honest server generates more than those and %d it does "
        "not show, so it is charged %d",
        call.span.id,
        call.span.request_model,
        said,
        call.shown_bytes,
        MAX_HIDDEN_REPLY,
        most,
    )
    return most


def within_latency(span: SpanRecord) -> None:
    """The reported durations cut to the call's latency, which the meter timed around them.

    Ollama times its work inside the request (load, then prompt evaluation, then
    generation), so no honest figure, nor the three together, is longer than the call: a
    10 ms call reported as 10^15 ns (11.6 days) was charged 11.6 days of GPU time. Time
    runs out in that order: the load is kept up to the latency, prompt evaluation up to
    what is left, generation up to the rest; ``total_duration`` up to the latency. A
    ``WARNING`` names each figure cut, what was reported and what was kept.
    """
    latency = left = span.latency_ns or 0
    cut: list[str] = []
    for name in ("load", "prompt_eval", "eval"):
        said = getattr(span, f"{name}_duration_ns")
        if said is None:
            continue
        kept = min(said, left)
        left -= kept
        if kept != said:
            setattr(span, f"{name}_duration_ns", kept)
            cut.append(f"{name}_duration {said:,} ns (kept {kept:,})")
    total = span.total_duration_ns
    if total is not None and total > latency:
        span.total_duration_ns = latency
        cut.append(f"total_duration {total:,} ns (kept {latency:,})")
    if cut:
        log.warning(
            "call %s to %s took %.6f s, and its answer reported longer at Ollama: %s; "
            "no honest figure is longer than the call, so each is cut to it",
            span.id,
            span.request_model,
            latency / 1e9,
            ", ".join(cut),
        )
