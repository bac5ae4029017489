"""The models a server's lists name, and the model a passed-through body names."""

from __future__ import annotations

import json
from typing import Any

from ollama_meter.gateway._json import MAX_DEPTH, NotJson, nests_too_deep, read_json
from ollama_meter.records import model_key


def list_answer(body: bytes, where: str) -> Any:
    """The JSON of a server's list at ``where``; ValueError if it is none the gateway can
    answer with again (the union's items are written again: one nested some thousand levels
    deep was read, then broke the answer of ``/api/tags`` for every caller)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser
        raise ValueError(f"{where} answered something that is not JSON") from None
    if nests_too_deep(body, value):
        raise ValueError(f"{where} answered JSON nested deeper than {MAX_DEPTH} levels")
    return value


def name_of(item: Any, name: str) -> str | None:
    """The model an entry of a list names: its ``name`` field (OpenAI's ``id``, Ollama's
    ``model``); in Ollama's lists else its ``name`` (older Ollamas and compatible servers
    list models by ``name`` alone)."""
    if not isinstance(item, dict):
        return None
    named = item.get(name) or (item.get("name") if name == "model" else None)
    return named if isinstance(named, str) and named else None


def names(answer: Any, field: str, name: str) -> list[str]:
    items = answer.get(field) if isinstance(answer, dict) else None
    named = (name_of(item, name) for item in (items if isinstance(items, list) else []))
    return [model_key(n) for n in named if n is not None]


def read_as_key(model: str) -> bool:
    """Whether Ollama reads ``model`` as the model :func:`model_key` names: ASCII, nothing
    around it. Ollama's ``model.ParseName`` neither trims a name nor folds it past ASCII, so
    ``'llama3.1:8b '`` or a tab before it is no name there (a 404, ``model '...' not
    found``), though ``model_key`` makes it llama3.1:8b's, as reports count it."""
    return model.isascii() and model == model.strip()


def model_named(body: bytes | None) -> str | None:
    """The model a passed-through body names (``/api/show``, ``/api/pull``...), if any.

    Read as a metered body is (:func:`read_json`): a body that holds more than any call
    needs names none, where reading it would take many times its size in memory.
    """
    try:
        obj = read_json(body) if body else None
    except NotJson:
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("model") or obj.get("name")
    return name if isinstance(name, str) and name.strip() else None
