"""What a request's pieces weigh once Ollama writes them into a prompt, in UTF-8 bytes.

A hard budget's bound counts bytes (no token is shorter than one). Ollama does not write
a tool, a tool call or its arguments as the request spelled them: it decodes them into
its Go structs and the model's template writes them again with Go's ``json.Marshal``.
The measures here are of what it writes, at least. Pure functions; no I/O.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from ollama_meter.budgets._estimate import PRINT_BYTES


def role_bytes(role: object) -> int:
    """What a message's role weighs past the :data:`~ollama_meter.budgets._estimate.PRINT_BYTES`
    a template's ``{{ .Role }}`` is allowed: Ollama takes any role, and writes it whole."""
    return max(written_bytes(role) - PRINT_BYTES, 0) if isinstance(role, str) else 0


def bytes_of(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def written_bytes(text: str) -> int:
    """UTF-8 bytes of ``text`` as Go's ``json.Marshal`` may write it into a prompt: it escapes
    ``<``, ``>`` and ``&`` (6 bytes for 1) and U+2028, U+2029 (6 for 3). Ollama's templates
    write tools and tool calls' arguments so (``{{ json . }}``), whatever the request sent."""
    escaped = text.count("<") + text.count(">") + text.count("&")
    if text.isascii():  # a byte a character, and neither separator
        return len(text) + 5 * escaped
    return bytes_of(text) + 5 * escaped + 3 * (text.count("\u2028") + text.count("\u2029"))


_FLOAT_BYTES = 26
"""The longest a JSON number is once Go has read it as a float64 and written it again
(``1e20`` is written ``100000000000000000000``; at most 17 digits, a point, six zeros, a sign)."""
TOOL_BYTES = 80
"""The keys Go writes for every tool (``api.Tool``), whether the request gave them or not:
``{"type":"","function":{"name":"","parameters":{"type":"","properties":null}}}``."""


def json_bytes(value: object) -> int:
    """UTF-8 bytes of ``value`` as JSON, at any depth, as long as either encoder writes it
    (``json.dumps(ensure_ascii=False)``, or Go's ``json.Marshal``: see :func:`written_bytes`).

    Measured by walking it, not by encoding it: a value nested deeper than the encoder's
    recursion allows still counts every byte (counting nothing would admit it as empty).
    """
    if value is None:
        return 0
    size = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) in _PLAIN:  # most of it: asked first, not of the ABCs below
            size += _scalar_bytes(item)
        elif isinstance(item, Mapping):
            size += 2 + 4 * len(item) - (2 if item else 0)  # {}, ": " and ", "
            for key, member in item.items():
                size += _scalar_bytes(key if isinstance(key, str) else str(key))
                pending.append(member)
        elif isinstance(item, list | tuple):
            size += 2 + 2 * len(item) - (2 if item else 0)  # [] and ", "
            pending.extend(item)
        elif inspect.isroutine(item):  # a Python function as a tool: sent as its JSON schema
            size += _schema_bytes(item)
        else:
            size += _scalar_bytes(item)
    return size


_PLAIN = frozenset({str, int, bool, float, type(None)})
"""What a body read as JSON holds besides lists and objects: none of them a mapping, a list
or a routine, which asking cost more than counting a string did."""


def field_bytes(value: object) -> int:
    """A field of a message or block as the template writes it: text escaped as Go writes
    it (:func:`written_bytes`), anything else as JSON (:func:`json_bytes`)."""
    return written_bytes(value) if isinstance(value, str) else json_bytes(value)


_SCHEMA_BYTES = 128
"""A tool schema's own keys: ``{"type": "function", "function": {"name": ..., "parameters": ...``."""
_PARAMETER_BYTES = 64
"""Each parameter's: ``"days": {"type": "integer", "description": ...}`` and its ``required``."""


def _schema_bytes(function: object) -> int:
    """At least the bytes of the schema the ``ollama`` client sends for ``function``: built
    from its name, its signature and its docstring (the descriptions are cut from it)."""
    parameters = _parameters(function)
    texts = [getattr(function, "__name__", ""), inspect.getdoc(function) or "", *parameters]
    return _SCHEMA_BYTES + _PARAMETER_BYTES * len(parameters) + sum(map(bytes_of, texts))


def _parameters(function: object) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without a signature
        return []


def _scalar_bytes(value: object) -> int:
    if isinstance(value, float):
        return _FLOAT_BYTES
    if type(value) is str:  # what json.dumps(ensure_ascii=False) writes of a string, without
        return written_bytes(encode_basestring(value))  # an encoder made for each one
    try:
        return written_bytes(json.dumps(value, ensure_ascii=False, default=str))
    except (TypeError, ValueError, RecursionError):  # an object whose str() fails: its repr
        return bytes_of(object.__repr__(value))


CALL_BYTES = 64
"""What a template writes around each tool call besides its name and arguments (qwen2.5's
``<tool_call>\n{"name": , "arguments": }\n</tool_call>`` is 45 bytes), the keys Go adds
(``api.ToolCall``) included."""


def calls_bytes(calls: object) -> int:
    return CALL_BYTES * len(calls) if isinstance(calls, list) else 0


def tools_bytes(tools: object) -> int:
    """The bytes of a request's tools as the template writes them, each with its own keys
    (none for no tools: an empty list, which clients send, writes nothing)."""
    if not tools:
        return 0
    return json_bytes(tools) + (TOOL_BYTES * len(tools) if isinstance(tools, list) else 0)


WEB_SEARCH_BYTES = 320
"""The tool Ollama writes for Anthropic's built-in web search (``"type": "web_search_..."``),
313 bytes whatever the request spelled of it (``{"name": "web_search"}``, 50)."""


def go_fields(value: object, name: str) -> list[Any]:
    """What Go's decoder may read as ``value``'s field ``name``: every key equal to it in any
    case (``TYPE``, a long s, the Kelvin sign), the last winning; in a part of a body the
    gateway takes as any object, such keys are not refused."""
    if not isinstance(value, Mapping):
        return []
    return [v for k, v in value.items() if isinstance(k, str) and k.casefold() == name]


def web_searches(tools: object) -> list[int]:
    """Where a request's tools name a web search that Ollama runs itself (Anthropic's built-in
    ``web_search_...`` on ``/v1/messages``, ``web_search`` on ``/v1/responses``), its type
    read in any case."""
    if not isinstance(tools, list):
        return []
    return [
        at
        for at, tool in enumerate(tools)
        if any(str(kind or "").startswith("web_search") for kind in go_fields(tool, "type"))
    ]


def names_by_call_id(messages: object) -> int:
    """Bytes of the tool names Ollama's OpenAI layer writes into tool messages that do not
    carry them: a ``tool`` message with no ``name`` but the ``tool_call_id`` of a call is given
    that call's name (``nameFromToolCallID``), which the template may write with its result.
    One call's name, named by id in a thousand results, is a thousand names in the prompt."""
    if not isinstance(messages, list):
        return 0
    longest: dict[str, int] = {}  # Go takes the latest call with the id: at most the longest
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, Mapping) else None
            name = function.get("name") if isinstance(function, Mapping) else None
            if isinstance(name, str) and isinstance(call.get("id"), str):
                longest[call["id"]] = max(longest.get(call["id"], 0), written_bytes(name))
    named = 0
    for message in messages:
        if not isinstance(message, Mapping) or message.get("name"):
            continue
        call_id = message.get("tool_call_id")
        if str(message.get("role")).lower() == "tool" and isinstance(call_id, str):
            named += longest.get(call_id, 0)
    return named


def arguments_bytes(arguments: object) -> int:
    """A tool call's arguments as the template writes them. OpenAI's are JSON text, which
    Ollama parses and Go writes again, every number a float64: ``1e20`` comes back as 21
    digits, so a string counts as the larger of itself and what it parses to."""
    if not isinstance(arguments, str):
        return json_bytes(arguments)
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):  # Ollama refuses it: the text is all there is
        return written_bytes(arguments)
    return max(written_bytes(arguments), json_bytes(parsed))


def tool_calls_bytes(calls: object) -> int:
    """A message's ``tool_calls`` as JSON (:func:`json_bytes`), each call's ``arguments``
    counted as the template writes them (:func:`arguments_bytes`)."""
    total = json_bytes(calls)
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if isinstance(arguments, str):
            total += max(arguments_bytes(arguments) - _scalar_bytes(arguments), 0)
    return total


_CALL_BLOCKS = ("tool_use", "server_tool_use")


def calls_in(messages: object) -> int:
    """The tool calls a chat's messages carry, in any wire format: a message's ``tool_calls``,
    a Responses ``function_call`` item, a Messages ``tool_use`` block (each one Ollama hands
    the model's template as a call)."""
    count = 0
    for message in messages if isinstance(messages, list) else ():
        fields = message if isinstance(message, Mapping) else {}
        calls = fields.get("tool_calls") if fields else getattr(message, "tool_calls", None)
        count += len(calls) if isinstance(calls, list | tuple) else 0
        count += fields.get("type") == "function_call"
        content = fields.get("content")
        for block in content if isinstance(content, list) else ():
            count += isinstance(block, Mapping) and block.get("type") in _CALL_BLOCKS
    return count


def parts_in(value: object) -> int:
    """Members of every list and object within ``value`` (a request's tools or messages), at
    any depth, a call's JSON ``arguments`` parsed as Ollama does: the most a template's
    ``range`` over a part of a tool or call (a tool's properties) repeats, all of them."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if type(item) in _PLAIN:  # most of it (asked first, as in json_bytes): no members,
            if type(item) is str:  # but a string of JSON's
                pending += _json_in(item)
        elif isinstance(item, Mapping):
            count += len(item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            count += len(item)
            pending.extend(item)
        elif isinstance(item, str) and item[:1] in ("{", "["):
            pending += _json_in(item)
        elif inspect.isroutine(item):  # a Python function as a tool: its schema's members
            count += _SCHEMA_PARTS + _PARAMETER_PARTS * len(_parameters(item))
        else:
            fields = getattr(type(item), "model_fields", None)  # the ollama client's models
            if isinstance(fields, Mapping):
                count += len(fields)
                pending.extend(getattr(item, name, None) for name in fields)
    return count


def _json_in(text: str) -> list[Any]:
    """The value a string of JSON holds (``[value]``), parsed as Ollama parses a call's
    ``arguments``; none for any other string."""
    if text[:1] in ("{", "["):
        with contextlib.suppress(ValueError, RecursionError):
            return [json.loads(text)]
    return []


_SCHEMA_PARTS = 16
"""Members of a function's schema besides its parameters' (its keys, ``parameters``')."""
_PARAMETER_PARTS = 8
"""A parameter's: its entry in ``properties``, its keys, its place in ``required``."""
