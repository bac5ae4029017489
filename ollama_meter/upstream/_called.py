"""The tool calls a reply made, read from the pieces of it that carry them, on every route.

A piece (:attr:`~._vocabulary.Delta.calls`) is what the wire gave, kept by reference and read
here only where content is captured:

- Ollama's and OpenAI's chats: a ``tool_calls`` list. An OpenAI stream sends one call in
  fragments of the same ``index``: the first with its id and name, the rest more of its
  arguments' text;
- Anthropic's Messages: a whole ``message`` (its ``tool_use`` blocks: ``id``, ``name``, the
  ``input`` object), or a stream's ``content_block_start`` of a ``tool_use`` block, then
  ``content_block_delta`` events of the same ``index`` whose ``input_json_delta`` pieces join
  into the input's JSON text;
- OpenAI's Responses: a whole ``response`` (its ``function_call`` items: ``call_id``,
  ``name``, the ``arguments`` JSON text), or a stream's ``response.output_item.added`` of a
  ``function_call`` item, then ``response.function_call_arguments.delta`` events of the same
  item (its ``.done`` event and ``output_item.done`` repeat them whole: not kept).

A request's earlier calls are of the same shapes (:func:`block_call`, :func:`item_call`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ollama_meter.records import Called
from ollama_meter.upstream._strict import strict_value

_USES = frozenset({"tool_use", "server_tool_use"})
"""Anthropic's blocks that are tool calls."""
_NO_KEY = object()

Fragment = tuple[object, bool, Called]
"""A piece of one call: the key of the call it belongs to (pieces of one share it; None: it
is a call of its own), whether it begins the call, and what it says of it."""


def tool_calls(pieces: list[object]) -> tuple[Called, ...]:
    """The tool calls in ``pieces``, in order: a stream's fragments of one call joined, and
    an Anthropic call's joined input read as the object it is (its text where it is none)."""
    calls: list[Called] = []
    at: dict[object, int] = {}
    texts: set[int] = set()  # Anthropic calls whose input came as JSON text
    more: dict[int, list[str]] = {}  # a call's arguments' text in pieces, joined once
    for key, begins, (ident, name, arguments) in (f for p in pieces for f in _fragments(p)):
        if not begins and key is not None and key in at:
            known = calls[at[key]][2]
            if isinstance(known, str) and isinstance(arguments, str):
                more.setdefault(at[key], [known]).append(arguments)
            continue
        if key is not None:
            at[key] = len(calls)
            if isinstance(key, tuple) and key[0] == "block":
                texts.add(len(calls))
        calls.append((ident, name, arguments))
    for index, parts in more.items():
        ident, name, _ = calls[index]
        calls[index] = (ident, name, "".join(parts))
    for index in texts:
        ident, name, arguments = calls[index]
        calls[index] = (ident, name, _object(arguments))
    return tuple(calls)


def block_call(block: Any) -> Called:
    """An Anthropic ``tool_use`` block as a call."""
    return _called(block.get("id"), block.get("name"), block.get("input"))


def item_call(item: Any) -> Called:
    """A Responses ``function_call`` item as a call."""
    return _called(item.get("call_id"), item.get("name"), item.get("arguments"))


def _fragments(piece: object) -> Iterator[Fragment]:
    if isinstance(piece, list):
        yield from _chat(piece)
    elif isinstance(piece, dict):
        kind = piece.get("type")
        if kind == "message" or piece.get("object") == "response":  # a whole answer
            for block in _dicts(piece.get("content") if kind == "message" else ()):
                if block.get("type") in _USES:
                    yield None, True, block_call(block)
            for item in _dicts(piece.get("output") if kind != "message" else ()):
                if item.get("type") == "function_call":
                    yield None, True, item_call(item)
        elif kind == "content_block_start":
            started = piece.get("content_block")
            key = ("block", _key(piece.get("index")))
            if isinstance(started, dict) and started.get("type") in _USES:
                ident, name, _ = block_call(started)
                yield key, True, (ident, name, "")
        elif kind == "content_block_delta":
            delta = piece.get("delta")
            text = delta.get("partial_json") if isinstance(delta, dict) else None
            yield ("block", _key(piece.get("index"))), False, (None, "", _str(text))
        elif kind == "response.output_item.added":
            added = piece.get("item")
            if isinstance(added, dict) and added.get("type") == "function_call":
                yield ("item", _key(added.get("id"))), True, item_call(added)
        elif kind == "response.function_call_arguments.delta":
            yield ("item", _key(piece.get("item_id"))), False, (None, "", _str(piece.get("delta")))


def _chat(piece: list[object]) -> Iterator[Fragment]:
    for call in piece:
        get = getattr(call, "get", None)
        function = get("function") if callable(get) else None
        read = getattr(function, "get", None)
        if not callable(get) or not callable(read):
            continue
        ident, name, arguments = get("id"), read("name"), read("arguments")
        dump = getattr(arguments, "model_dump", None)  # the ``ollama`` client's objects
        index = get("index")
        key = ("chat", index) if isinstance(index, int) else None
        called = _called(ident, name, dump() if callable(dump) else arguments)
        yield key, bool(ident or name), called


def _called(ident: object, name: object, arguments: object) -> Called:
    text = ident if isinstance(ident, str) and ident else None
    return text, name if isinstance(name, str) else "", arguments


def _dicts(value: object) -> Iterator[dict[str, Any]]:
    return (v for v in (value if isinstance(value, list) else ()) if isinstance(v, dict))


def _key(value: object) -> object:
    return value if isinstance(value, int | str) else _NO_KEY


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _object(text: object) -> object:
    """A streamed Anthropic input: the object its JSON text is (read as strictly as the wire
    is), else the text as it came; none came: an empty object, as a whole answer's is."""
    if not isinstance(text, str):
        return text
    if not text:
        return {}
    try:
        return strict_value(text)
    except (ValueError, RecursionError):  # not JSON, or NaN: the text
        return text
