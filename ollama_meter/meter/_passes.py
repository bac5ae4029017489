"""A chat Ollama runs twice: what the meter charges of the pass Ollama does not report.

A thinking model's chat with a ``format`` runs first without it: the model thinks (the
thinking streams to the client), and as it starts to answer Ollama cancels that pass and runs
the chat again with the format, the thinking in its prompt. The final chunk reports only the
second pass, so a price by the GPU-hour or the watt charged none of the first pass's work.

The gateway saw that work: the thinking streamed from its first piece to its last, while the
first pass generated it. That interval is charged as generation, the way Ollama's own
``eval_duration`` is the wall time of generation (a client reading slowly holds both back
alike). It is a lower bound of the pass's work: its prompt's evaluation and a model load came
before the first piece, apart from the time to wait for a slot, and are not charged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ollama_meter.records import DurationSource

if TYPE_CHECKING:
    from ollama_meter.meter._call import MeteredCall

log = logging.getLogger("ollama_meter.meter")


def unreported_pass_ns(call: MeteredCall) -> int:
    """How long the first pass of ``call`` was seen generating; 0 when Ollama reported all it ran.

    The first pass ran and went unreported when the call may take two (:attr:`passes`),
    its stream thought before it answered, and the reply Ollama counted is shorter than the
    pieces it streamed: one pass counts its thinking as reply, the second does not (it is in
    the second pass's prompt).
    """
    final, seen = call.final, call.thinking_ns
    if call.passes < 2 or seen is None or final is None or final.output_tokens is None:
        return 0
    answered = call.content_chunks - call.thought_chunks
    if not answered or final.output_tokens >= call.content_chunks:
        return 0
    return seen[1] - seen[0]


def charge_unreported_pass(call: MeteredCall) -> None:
    """Add the first pass's generation (:func:`unreported_pass_ns`) to the span's, within the
    call's latency as Ollama's own figures are kept (``_honest.within_latency``)."""
    ran = unreported_pass_ns(call)
    span = call.span
    if ran <= 0 or span.latency_ns is None:
        return
    busy = sum(
        d or 0 for d in (span.load_duration_ns, span.prompt_eval_duration_ns, span.eval_duration_ns)
    )
    added = min(ran, max(span.latency_ns - busy, 0))
    span.eval_duration_ns = (span.eval_duration_ns or 0) + added
    if added:  # no longer Ollama's figure alone: perf's speed leaves it out, as any measured
        span.duration_source = DurationSource.MEASURED
    log.info(
        "call %s to %s ran a first pass Ollama does not report (thinking, then a format): "
        "its %.3f s of thinking are charged as generation",
        span.id,
        span.request_model,
        added / 1e9,
    )
