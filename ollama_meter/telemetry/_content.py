"""Prompts and replies as the GenAI conventions export them: whole JSON within a length.

``gen_ai.input.messages`` is the chat history, each message with its role in the order sent;
``gen_ai.system_instructions`` the instructions a request gives apart from its messages (a
generate's ``system``, Anthropic's ``system``, a Responses request's ``instructions``);
``gen_ai.output.messages`` the reply with its ``finish_reason``, which the conventions require.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ollama_meter.records import SpanRecord, storable_text

MAX_EXPORTED_TEXT = 16_384
"""Characters an exported text attribute holds, prompt and reply included (cut, ending in "…").

Spans wait in memory while a collector is away, up to the exporter's queue, so each must be
small; the ledger keeps the whole text."""

_MAX_ROLE = 64
"""Characters of a role (the conventions name a few, such as ``user``; a caller may send any)."""

Turn = tuple[str | None, list[str]]
"""One message's role (None: instructions apart from the messages) and its texts."""


def bounded(text: str, limit: int = MAX_EXPORTED_TEXT) -> str:
    # Cut first: a 1 MB prompt is not scanned whole, on the call's path, to keep 16 KB of it.
    return storable_text(text[: limit + 1], limit)


def said_by(span: SpanRecord) -> list[Turn]:
    """``span.prompt`` as its messages: by ``span.said`` where it still measures the prompt
    (a hook may have rewritten it), else one user message of the whole text."""
    prompt = span.prompt or ""
    lengths = [n for _, texts in span.said for n in texts]
    if not lengths or sum(lengths) + len(lengths) - 1 != len(prompt):
        return [("user", [prompt])]
    turns: list[Turn] = []
    at = 0
    for role, texts in span.said:
        turns.append((role, []))
        for n in texts:
            turns[-1][1].append(prompt[at : at + n])
            at += n + 1
    return turns


def input_of(span: SpanRecord, limit: int) -> tuple[str | None, str | None]:
    """``gen_ai.input.messages`` and ``gen_ai.system_instructions`` of ``span``'s prompt."""
    turns = said_by(span)
    instructions = [text for role, texts in turns if role is None for text in texts]
    history = [(role, texts) for role, texts in turns if role is not None]
    apart = document([(None, instructions)], limit, parts_only=True) if instructions else None
    return (document(history, limit) if history else None), apart


def _written(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def message(
    role: str, text: str, limit: int = MAX_EXPORTED_TEXT, finish_reason: str | None = None
) -> str | None:
    """One message of one text part (:func:`document`)."""
    return document([(role, [text])], limit, finish_reason)


def document(
    turns: Sequence[tuple[str | None, Sequence[str]]],
    limit: int = MAX_EXPORTED_TEXT,
    finish_reason: str | None = None,
    *,
    parts_only: bool = False,
) -> str | None:
    """``turns`` as valid JSON within ``limit`` characters (and :data:`MAX_EXPORTED_TEXT`):
    the longest text cut first (ending in "…"), then, where every text is down to "…", the
    oldest message left out; None when not even one "…" fits. ``parts_only``: the parts of
    the one turn, as ``gen_ai.system_instructions`` holds them.

    The SDK cuts a value past ``OTEL_[SPAN_]ATTRIBUTE_VALUE_LENGTH_LIMIT`` where it stands,
    mid-string: JSON no reader could parse."""
    limit = min(limit, MAX_EXPORTED_TEXT)
    messages: list[dict[str, Any]] = []
    # Newest first, no more text and parts than could fit: a history of a thousand long
    # messages is not written whole as JSON, on the call's path, to keep 16 KB of it.
    text, room = limit, limit // len('{"type":"","content":""}')
    for role, texts in reversed(turns):
        parts: list[dict[str, str]] = []
        for said in reversed(texts):
            if text <= 0 < len(said) or room <= 0:
                break
            content = bounded(str(said), max(text, 1))
            text, room = text - len(content), room - 1
            parts.insert(0, {"type": "text", "content": content})
        if not parts:
            break
        who = role if role is None else storable_text(role[: _MAX_ROLE + 1], _MAX_ROLE)
        messages.insert(0, {"role": who, "parts": parts})
        if finish_reason is not None:
            messages[0]["finish_reason"] = finish_reason

    def dumped() -> str:
        shown = messages[0]["parts"] if parts_only else messages
        return json.dumps(shown, ensure_ascii=False)

    while messages and len(out := dumped()) > limit:
        over = len(out) - limit
        longest = max(
            (part for m in messages for part in m["parts"]), key=lambda part: len(part["content"])
        )
        content = longest["content"]
        if _written(content) - _written("…") >= over:  # cut to "…" at most, it fits
            # As many characters as the excess takes at this text's JSON characters for one
            # (2 for a quote, 6 for a control character), one more for "…"; at least two, so
            # a text already ending in "…" is shorter once it ends in "…" again.
            cut = max(-(-(over + 1) * len(content) // (_written(content) - 2)), 2)
            longest["content"] = content[: max(0, len(content) - cut)] + "…"
            continue
        # No one text holds the excess: the oldest messages (instructions: parts) go.
        items = messages[0]["parts"] if parts_only else messages
        gone = freed = 0
        while gone < len(items) - 1 and freed < over:  # the newest is cut, if it can be
            freed, gone = freed + _written(items[gone]) + len(", "), gone + 1
        del items[: max(gone, 1)]
        if not items:
            messages.clear()
    return out if messages else None
