"""Token counts when Ollama does not give them, and the usage a span is priced on."""

from __future__ import annotations

from ollama_meter.pricing import Usage
from ollama_meter.records import SpanRecord, Status

_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough count for text Ollama did not count: about four characters a token."""
    return -(-len(text) // _CHARS_PER_TOKEN) if text else 0


def usage_of(span: SpanRecord) -> Usage:
    """The facts of a recorded span that its price depends on."""
    return Usage(
        input_tokens=span.input_tokens,
        output_tokens=span.output_tokens,
        prompt_eval_ns=span.prompt_eval_duration_ns or 0,
        eval_ns=span.eval_duration_ns or 0,
        load_ns=span.load_duration_ns or 0,
        answered=span.status in (Status.OK, Status.CLIENT_ABORT),
    )
