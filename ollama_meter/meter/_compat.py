"""What Ollama's OpenAI and Anthropic layers make of a request: the chat it becomes.

Ollama turns a ``/v1/responses`` or ``/v1/messages`` body into a chat before the model's
template sees it; the meter reads such a body the same way (texts, messages, images, and
the bytes the template writes as JSON); and what these layers do beyond one chat: structured
output (a thinking model's second pass), a web search Ollama runs itself, a Responses
conversation Ollama keeps. Their keys are read as Go's decoder reads them, in any case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ollama_meter.meter._told import Mark
from ollama_meter.meter._written import (
    CALL_BYTES,
    TOOL_BYTES,
    arguments_bytes,
    calls_bytes,
    field_bytes,
    go_fields,
    json_bytes,
    role_bytes,
    tool_calls_bytes,
    web_searches,
    written_bytes,
)

Turn = tuple[str | None, list[str]]
"""One message's role (None: instructions given apart from the messages) and its texts."""


def text_of(value: object) -> str:
    """``value`` if it is a text, else nothing (a request is untrusted input)."""
    return value if isinstance(value, str) else ""


def content_parts(content: object) -> tuple[list[str], int]:
    """Texts and image count of one message's content (a string, or OpenAI's list of parts)."""
    if isinstance(content, str):
        return [content], 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") in ("image_url", "input_image", "image"):
                images += 1
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts, images


def _fields(value: object) -> Mapping[str, Any] | None:
    """A message's fields: a mapping, or a model the ``ollama`` client takes (``ollama.Message``)."""
    if isinstance(value, Mapping):
        return value
    names = getattr(type(value), "model_fields", None)
    if not isinstance(names, Mapping):
        return None
    fields = {name: getattr(value, name, None) for name in names}
    return {name: field for name, field in fields.items() if field is not None}


_COUNTED_APART = frozenset({"role", "content", "images"})
"""A message's fields counted on their own: the role (in MESSAGE_TOKENS), texts, images."""


def chat_input(messages: object, marks: list[Mark]) -> tuple[list[Turn], int, int, int]:
    """Texts by who said them, message count, image count and extra bytes (tool calls, thinking...) of a chat.

    Anything else a message carries may reach the model's template (its thinking, tool
    calls, tool names), so its bytes count; and Ollama makes each part of an OpenAI
    content list a message of its own, with its own role markers. ``marks`` gets the id of
    the call each tool result answers, and each message's tool calls.
    """
    turns: list[Turn] = []
    count = images = extra = 0
    if not isinstance(messages, list):
        return turns, count, images, extra
    for message in map(_fields, messages):
        if message is None:
            continue
        content = message.get("content")
        made = len(content) if isinstance(content, list) and content else 1
        count, extra = count + made, extra + made * role_bytes(message.get("role"))
        parts, pictures = content_parts(content)
        turns.append((text_of(message.get("role")) or "user", parts))
        if turns[-1][0] == "tool":
            marks.append((len(turns) - 1, "answer", message.get("tool_call_id")))
        if message.get("tool_calls"):
            marks.append((len(turns) - 1, "chat", message["tool_calls"]))
        images += pictures
        if isinstance(message.get("images"), list):
            images += len(message["images"])
        extra += calls_bytes(message.get("tool_calls")) + sum(
            tool_calls_bytes(value) if key == "tool_calls" else field_bytes(value)
            for key, value in message.items()
            if key not in _COUNTED_APART
        )
    return turns, count, images, extra


_ITEM_APART = frozenset({"type", "role", "content", "output"})
"""A Responses input item's fields counted on their own: its type and role (in
MESSAGE_TOKENS), its content or a tool's output (texts and images)."""


def responses_input(body: Mapping[str, Any], marks: list[Mark]) -> tuple[list[Turn], int, int, int]:
    """Texts by who said them, message count, image count and extra bytes of a Responses API request.

    Ollama makes a chat of it: ``instructions`` a system message, a string ``input`` a
    user message, each input item at most one message (a message's parts joined, a tool's
    output, a call's name and arguments, reasoning merged into the next message). ``marks``
    gets each call's item and the id of the call each output answers.
    """
    turns: list[Turn] = [(None, [text_of(body.get("instructions"))])]
    count = 1 if turns[0][1][0] else 0
    images = extra = 0
    value = body.get("input")
    if isinstance(value, str):
        turns.append(("user", [value]))
        count += 1 if value else 0
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, Mapping):
            continue
        count, extra = count + 1, extra + role_bytes(item.get("role"))
        turns.append((_item_role(item), []))
        for key in ("content", "output"):
            parts, pictures = content_parts(item.get(key))
            turns[-1][1].extend(parts)
            images += pictures
        if item.get("type") == "function_call":
            extra += CALL_BYTES
            marks.append((len(turns) - 1, "item", item))
        elif item.get("type") == "function_call_output":
            marks.append((len(turns) - 1, "answer", item.get("call_id")))
        extra += sum(  # a call's arguments are parsed, and written again as JSON
            arguments_bytes(field) if key == "arguments" else field_bytes(field)
            for key, field in item.items()
            if key not in _ITEM_APART
        )
        extra += sum(map(namespaced_bytes, go_fields(item, "tools")))
    return turns, count, images, extra + outputs_named(value)


def _item_role(item: Mapping[str, Any]) -> str:
    """Who said a Responses input item: its role; else a tool for a call's output, the
    assistant for its call or reasoning, the user for anything else."""
    role = text_of(item.get("role"))
    kind = text_of(item.get("type"))
    if role:
        return role
    if kind.endswith("_output"):
        return "tool"
    return "assistant" if kind.endswith("_call") or kind == "reasoning" else "user"


def outputs_named(items: object) -> int:
    """Bytes of the calls' names Ollama may give their outputs: an item that answers a call
    (``call_id``) and is not one may be written as a tool message named after the call with
    that id, which the template may write with it (as Ollama names a ``tool_search_output``).
    One call's name, answered a thousand times, is a thousand names in the prompt."""
    if not isinstance(items, list):
        return 0
    longest: dict[str, int] = {}  # the call with the id: at most the longest of them
    answers: list[str] = []
    for item in items:
        kinds = [text_of(k) for k in go_fields(item, "type")]
        for call_id in (text_of(c) for c in go_fields(item, "call_id")):
            if any(k.endswith("_call") for k in kinds):
                names = [written_bytes(text_of(n)) for n in go_fields(item, "name")]
                longest[call_id] = max([longest.get(call_id, 0), *names])
            else:
                answers.append(call_id)
    return sum(longest.get(call_id, 0) for call_id in answers)


def namespaced_bytes(tools: object, prefix: int = 0) -> int:
    """What Ollama writes of a ``tool_search_output``'s tools beyond their JSON, counted once
    already: each tool of a namespace named with the namespace's names before its own
    (``orders.lookup_order``, a prefix of ``prefix`` bytes), with the keys Go writes for a
    tool. A long namespace, named once in the body, is written once a tool in it."""
    total = 0
    for tool in tools if isinstance(tools, list) else []:
        inner = [t for t in go_fields(tool, "tools") if isinstance(t, list)]
        if not inner:
            total += prefix + TOOL_BYTES
            continue
        name = sum(written_bytes(text_of(n)) + 1 for n in go_fields(tool, "name"))
        total += sum(namespaced_bytes(t, prefix + name) for t in inner)
    return total


_BLOCK_APART = frozenset({"type", "text", "content"})
"""A Messages content block's fields counted on their own: its type, its text, a tool
result's content (texts and images), a web search result's."""
_CALLS = frozenset({"tool_use", "server_tool_use"})


def messages_input(body: Mapping[str, Any], marks: list[Mark]) -> tuple[list[Turn], int, int, int]:
    """Texts by who said them, message count, image count and extra bytes of a Messages API request.

    Ollama makes a chat of it: ``system`` (a string, or its text blocks joined) a system
    message, each message one message of its text blocks (its images, tool calls and
    thinking beside them), each ``tool_result`` and ``web_search_tool_result`` block a
    tool message of its own. ``marks`` gets each ``tool_use`` block (with the message it is
    in) and the id of the call each ``tool_result`` answers.
    """
    system = body.get("system")
    instructions, _ = content_parts(system) if isinstance(system, str | list) else ([], 0)
    turns: list[Turn] = [(None, instructions)]
    count = 1 if any(instructions) else 0
    images = extra = 0
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, Mapping):
            continue
        count, extra = count + 1, extra + role_bytes(message.get("role"))
        own: Turn = (text_of(message.get("role")) or "user", [])
        turns.append(own)
        own_at = len(turns) - 1
        content = message.get("content")
        if isinstance(content, str):
            own[1].append(content)
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "image":
                images += 1
            elif isinstance(block.get("text"), str):
                if turns[-1] is not own:  # after a tool's result: the message goes on
                    turns.append(own := (own[0], []))
                    own_at = len(turns) - 1
                own[1].append(block["text"])
            if kind == "tool_result":
                count += 1
                inner = block.get("content")
                parts, pictures = content_parts(inner if isinstance(inner, str | list) else None)
                turns.append(("tool", parts))
                marks.append((len(turns) - 1, "answer", block.get("tool_use_id")))
                images += pictures
            elif kind == "web_search_tool_result":  # a tool message of its results' lines
                count += 1
                extra += json_bytes(block.get("content"))
            elif kind in _CALLS:  # the template writes each call in its own wrapper
                extra += CALL_BYTES
                marks.append((own_at, "block", block))
            extra += sum(  # names and arguments are written as JSON, escaped
                field_bytes(field)
                for key, field in block.items()
                if key not in _BLOCK_APART and not (kind == "image" and key == "source")
            )
    return turns, count, images, extra


def formatted(openai: bool, kind: str, body: Mapping[str, Any]) -> bool:
    """Whether a chat asks for structured output, which Ollama gives a thinking model in a
    second pass. Natively any ``format`` (Go keeps even ``null`` or ``""`` as set); on
    ``/v1/chat/completions`` a ``response_format`` and on ``/v1/responses`` a ``text.format``
    of type ``json_object`` or ``json_schema``, in any case."""
    if not openai:
        return "format" in body
    if kind == "responses":
        shapes = [f for text in go_fields(body, "text") for f in go_fields(text, "format")]
    else:
        shapes = go_fields(body, "response_format")
    kinds = [text_of(t).strip().lower() for shape in shapes for t in go_fields(shape, "type")]
    return bool({"json_object", "json_schema"}.intersection(kinds))


def continued(body: Mapping[str, Any]) -> str | None:
    """Why a Responses request's prompt has no bound in its body, if it has none: it names an
    earlier response (``previous_response_id``, in any case), whose conversation Ollama keeps
    (up to 64 MiB, for 30 minutes) and puts before the request's input."""
    if any(named is not None for named in go_fields(body, "previous_response_id")):
        return (
            "previous_response_id continues a conversation Ollama keeps, of a size nobody "
            "knows before the call (send the conversation in input instead)"
        )
    return None


def searched(tools: object) -> str | None:
    """Why a request's prompt has no bound in its body, if it has none: its tools name a web
    search Ollama runs itself (:func:`web_searches`), answering the call with up to four chats
    (``maxWebSearchLoops``), the later ones over results it fetched."""
    searches = web_searches(tools)
    if not searches:
        return None
    return (
        f"tools[{searches[0]}] is a web search, which Ollama runs itself and answers with up "
        "to four chats, the later ones over search results of a size nobody knows before the "
        "call"
    )
