"""Prompts and replies as the GenAI conventions export them: whole JSON within a length.

``gen_ai.input.messages`` is the chat history, each message with its role in the order sent;
``gen_ai.system_instructions`` the instructions a request gives apart from its messages (a
generate's ``system``, Anthropic's ``system``, a Responses request's ``instructions``);
``gen_ai.output.messages`` the reply with its ``finish_reason``, which the conventions require.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ollama_meter.records import (
    Called,
    SpanRecord,
    Status,
    Told,
    exported_json,
    readied,
    storable_text,
)
from ollama_meter.telemetry._semconv import input_only

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
    if not _measures(span):
        return [("user", [prompt])]
    turns: list[Turn] = []
    at = 0
    for role, texts in span.said:
        turns.append((role, []))
        for n in texts:
            turns[-1][1].append(prompt[at : at + n])
            at += n + 1
    return turns


def _measures(span: SpanRecord) -> bool:
    """Whether ``span.said`` measures ``span.prompt`` (a hook may have rewritten it)."""
    lengths = [n for _, texts in span.said for n in texts]
    return bool(span.said) and sum(lengths) + max(len(lengths) - 1, 0) == len(span.prompt or "")


def input_of(span: SpanRecord, limit: int) -> tuple[str | None, str | None]:
    """``gen_ai.input.messages`` and ``gen_ai.system_instructions`` of ``span``'s prompt."""
    turns = said_by(span)
    instructions = [text for role, texts in turns if role is None for text in texts]
    told = span.told if _measures(span) and len(span.told) == len(turns) else ()
    history: list[tuple[str | None, list[Part]]] = []
    nothing: list[Told] = [(None, ())] * len(turns)
    for (role, texts), (answer, calls) in zip(turns, told or nothing, strict=True):
        if role is not None:  # a tool's result, then what the message called
            answered = role == "tool" or answer is not None
            history.append((role, [Answer(answer, t) if answered else t for t in texts]))
            history[-1][1].extend(calls)
        if history and not history[-1][1]:
            history.pop()
    apart = document([(None, instructions)], limit, parts_only=True) if instructions else None
    return (document(history, limit) if history else None), apart


def _written(value: Any) -> int:
    return len(exported_json(value))


def replied(span: SpanRecord) -> bool:
    """Whether the model gave ``span``'s call a reply to export (``gen_ai.output.messages``:
    the messages it returned): text, tool calls, or an empty text it ended well with. An
    embedding gives none (its vectors are no message), nor a call that failed before a word
    came: each was exported as an assistant message of empty text."""
    if input_only(span.operation):
        return False
    return bool(span.reply or span.called) or (span.reply is not None and span.status == Status.OK)


def reply_of(span: SpanRecord, limit: int, finish_reason: str) -> str | None:
    """``gen_ai.output.messages`` of ``span``'s reply: its text, then each tool call it made
    (none but the calls where it said nothing else)."""
    reply = span.reply or ""
    parts: list[Part] = [reply] if reply or not span.called else []
    return document([("assistant", [*parts, *span.called])], limit, finish_reason)


class Answer(NamedTuple):
    """A ``tool`` message's text: the result of the call with the id (None: not given)."""

    id: str | None
    text: str


Part = str | Answer | Called
"""What a message said: a text (a ``tool`` message's: the result of a call), or a tool call."""
_BULK = {"text": "content", "tool_call": "arguments", "tool_call_response": "response"}
"""The field of each kind of part that holds what was said: the one cut to fit."""
_MAX_NAME = 255
"""Characters of a tool call's id and name."""


def _length(said: Part) -> int:
    """Characters of what ``said`` says (a tool call: at least one, its name)."""
    if isinstance(said, str | Answer):
        return len(said if isinstance(said, str) else said.text)
    return 1


def _part(role: str | None, said: Part, room: int) -> dict[str, Any]:
    """``said`` as the conventions' part, what it says at most ``room`` characters (an object,
    a tool call's arguments, as its JSON text where that is longer)."""
    if isinstance(said, Answer) or (role == "tool" and isinstance(said, str)):
        ident, text = said if isinstance(said, Answer) else (None, said)
        return {**_id("tool_call_response", ident), "response": bounded(text, room)}
    if isinstance(said, str):
        return {"type": "text", "content": bounded(said, room)}
    ident, name, arguments = said
    part = {**_id("tool_call", ident), "name": bounded(str(name), _MAX_NAME)}
    if isinstance(arguments, str):
        part["arguments"] = bounded(arguments, room)
    else:  # as JSON any reader takes (a caller's object may hold NaN)
        arguments, written = readied(arguments)
        part["arguments"] = arguments if len(written) <= room else bounded(written, room)
    return part


def _id(kind: str, ident: str | None) -> dict[str, Any]:
    """A part of ``kind`` with its call's id, where there is one."""
    return {"type": kind} if ident is None else {"type": kind, "id": bounded(ident, _MAX_NAME)}


def _size(part: dict[str, Any]) -> int:
    """How long what ``part`` says is: a text's characters, an object's as JSON."""
    value = part[_BULK[part["type"]]]
    return len(value) if isinstance(value, str) else _written(value)


def document(
    turns: Sequence[tuple[str | None, Sequence[Part]]],
    limit: int = MAX_EXPORTED_TEXT,
    finish_reason: str | None = None,
    *,
    parts_only: bool = False,
) -> str | None:
    """``turns`` as valid JSON within ``limit`` characters (and :data:`MAX_EXPORTED_TEXT`):
    the longest text cut first (ending in "…"; a tool call's arguments are a text for this,
    an object cut as its JSON text), then, where no one text holds the excess, the oldest
    message left out (of a lone message, its oldest parts); None when not even one "…" fits. ``parts_only``: the parts of the one
    turn, as ``gen_ai.system_instructions`` holds them.

    The SDK cuts a value past ``OTEL_[SPAN_]ATTRIBUTE_VALUE_LENGTH_LIMIT`` where it stands,
    mid-string: JSON no reader could parse."""
    limit = min(limit, MAX_EXPORTED_TEXT)
    messages: list[dict[str, Any]] = []
    # Newest first, no more text and parts than could fit: a history of a thousand long
    # messages is not written whole as JSON, on the call's path, to keep 16 KB of it.
    text, room = limit, limit // len('{"type":"","content":""}')
    for role, texts in reversed(turns):
        parts: list[dict[str, Any]] = []
        for said in reversed(texts):
            if text <= 0 < _length(said) or room <= 0:
                break
            part = _part(role, said, max(text, 1))
            text, room = text - _size(part), room - 1
            parts.insert(0, part)
        if not parts:
            break
        who = role if role is None else storable_text(role[: _MAX_ROLE + 1], _MAX_ROLE)
        messages.insert(0, {"role": who, "parts": parts})
        if finish_reason is not None:
            messages[0]["finish_reason"] = finish_reason

    def dumped() -> str:
        shown = messages[0]["parts"] if parts_only else messages
        return exported_json(shown)

    while messages and len(out := dumped()) > limit:
        over = len(out) - limit
        longest = max((part for m in messages for part in m["parts"]), key=_size)
        key = _BULK[longest["type"]]
        content, grown = longest[key], 0
        if not isinstance(content, str):  # an object (arguments): cut as its JSON text
            written = _written(content)
            content = exported_json(content)
            grown = _written(content) - written  # a text's JSON escapes what the object's did not
        if _written(content) - _written("…") >= over + grown:  # cut to "…" at most, it fits
            # As many characters as the excess takes at this text's JSON characters for one
            # (2 for a quote, 6 for a control character), one more for "…"; at least two, so
            # a text already ending in "…" is shorter once it ends in "…" again.
            cut = max(-(-(over + grown + 1) * len(content) // (_written(content) - 2)), 2)
            longest[key] = content[: max(0, len(content) - cut)] + "…"
            continue
        # No one text holds the excess: the oldest messages go; of one message (the reply,
        # the instructions), its oldest parts.
        one = parts_only or (len(messages) == 1 and len(messages[0]["parts"]) > 1)
        items = messages[0]["parts"] if one else messages
        gone = freed = 0
        while gone < len(items) - 1 and freed < over:  # the newest is cut, if it can be
            freed, gone = freed + _written(items[gone]) + len(", "), gone + 1
        del items[: max(gone, 1)]
        if not items:
            messages.clear()
    return out if messages else None
