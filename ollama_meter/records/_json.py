"""Exported JSON: valid whatever a caller's objects hold.

A value the meter exports as JSON (a tool call's arguments, in a span's messages) comes from
Ollama, read strictly, or from a Python caller, whose objects may hold what JSON cannot:
NaN or an infinity (Python's encoder writes them as ``NaN`` and ``Infinity``, which no JSON
reader takes), keys that are not text, a list inside itself, nesting deeper than the
interpreter recurses, an integer longer than Python writes. One encoder writes them all.
"""

from __future__ import annotations

import json
import math
from typing import Any

_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)
"""Made once; ``json.dumps`` given an argument makes an encoder at every call."""
DEEPEST = 64
"""Levels of lists and objects a value written again keeps; deeper ones are "…"."""
_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}


def exported_json(value: Any) -> str:
    """``value`` as JSON any reader takes: Python's own where it is that, else
    :func:`plain` of it (NaN and the infinities written as their names, in text)."""
    return readied(value)[1]


def readied(value: Any) -> tuple[Any, str]:
    """``value``, or :func:`plain` of it where Python's JSON of it is none, and its JSON."""
    try:
        return value, _STRICT.encode(value)
    except Exception:  # ValueError (NaN, a cycle, a long int), TypeError, RecursionError...
        value = plain(value)
        return value, _STRICT.encode(value)


def plain(value: Any, depth: int = 0, within: frozenset[int] = frozenset()) -> Any:
    """``value`` as JSON's own types: a number that is not finite as its name, a key that is
    not text as its text, a list or object inside itself or deeper than :data:`DEEPEST` as
    "…", anything else as its text (what ``default=str`` writes)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NAMES.get(value, "NaN")
    if isinstance(value, int):
        return value if abs(value) < 10**4000 else "…"  # Python writes 4,300 digits at most
    if isinstance(value, dict | list | tuple):
        if depth >= DEEPEST or id(value) in within:
            return "…"
        inner = within | {id(value)}
        if isinstance(value, dict):
            return {_key(k): plain(v, depth + 1, inner) for k, v in value.items()}
        return [plain(item, depth + 1, inner) for item in value]
    return _text(value)


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    shown = plain(key)
    return shown if isinstance(shown, str) else _STRICT.encode(shown)


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a caller's object whose __str__ fails
        return type(value).__name__
