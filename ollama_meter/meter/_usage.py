"""Token counts when Ollama does not give them, and the usage a span is priced on."""

from __future__ import annotations

from ollama_meter.pricing import usage_of

__all__ = ["estimate_tokens", "tokens_in_chars", "usage_of"]

_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough count for text Ollama did not count: about four characters a token."""
    return tokens_in_chars(len(text))


def tokens_in_chars(chars: int) -> int:
    """:func:`estimate_tokens` of a text ``chars`` characters long."""
    return -(-chars // _CHARS_PER_TOKEN) if chars > 0 else 0
