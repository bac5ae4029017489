"""A request body's JSON read as Ollama's Go decoder would take it, at a bounded cost.

Refused, each with the reason a caller can act on: a key given twice in one object (Go does
not simply keep the last value: ``"stream": true, "stream": null`` streams, repeated
objects are merged), ``NaN`` and other constants, numbers past a float's range (integers
too), nesting deeper than :data:`MAX_DEPTH`, and more than :data:`MAX_OBJECTS` objects or
:data:`MAX_ARRAYS` arrays.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

MAX_OBJECTS = 100_000
"""The most JSON objects one body may hold. Each costs the gateway far more memory than its
text (a body of 10 million empty messages, 30 MB, took 7.3 GB and 77 s to check); a long
conversation with tools and images holds a few thousand."""


MAX_DEPTH = 512
"""How deep a body may nest (the body itself is one level; a tool's schema nests a few
dozen). Python's decoder stops where its stack does, which is nearer or farther with where
it runs: a body over 64 KiB is read in a thread, with more stack left, and was then taken
nested deeper than the event loop could write it again (with a hard budget's reply cap):
a 500, and no span. Far below either, a body taken is one every part of the gateway can
write again."""
_TOO_DEEP = "the JSON body is nested too deeply"

INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are read on the event loop (under 20 ms); larger, in a thread."""

MAX_ARRAYS = 100_000
"""The most JSON arrays one body may hold, for the same reason: an empty one costs 64 bytes of
memory for its 3 of text (32 MB of ``[[],[],...]``, 11 million of them, took 770 MB and 4 s
to check). A batch of token-id inputs to embed holds a few thousand."""

_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
"""A JSON string, escapes included (so a bracket, or a quote escaped, inside it is text); one
left open runs to the end, so no quote is tried again from inside it (that took time
quadratic in a body of ``\\"[`` repeated)."""


class NotJson(ValueError):
    """The body is no JSON the gateway takes; the message says why."""


def read_json(raw: bytes) -> Any:
    """``raw`` decoded; :class:`NotJson` for what Ollama would read otherwise, or not at all."""
    # Counted before any is made (Python's decoder has no hook for arrays); the strings are
    # looked into only when there are that many brackets at all, which few bodies have.
    if raw.count(b"[") > MAX_ARRAYS and arrays_in(raw) > MAX_ARRAYS:
        raise NotJson(
            f"the JSON body holds more than {MAX_ARRAYS:,} arrays, more than any call needs "
            "(each list of messages, inputs or token ids is one): send fewer"
        )
    try:
        value = _decoded(raw)
    except RecursionError:
        raise NotJson(_TOO_DEEP) from None
    except _TooMany:
        raise NotJson(
            f"the JSON body holds more than {MAX_OBJECTS:,} objects, more than any call "
            "needs (each message, tool or part is one): send fewer"
        ) from None
    except _Repeated as repeated:
        raise NotJson(
            f"the key {json.dumps(repeated.key)} is given twice in one object, which Ollama "
            "reads otherwise than the last one (a repeated null changes nothing, repeated "
            "objects are merged): give each key once"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotJson(f"invalid JSON body: {exc}") from None
    if nests_too_deep(raw, value):
        raise NotJson(_TOO_DEEP)
    return value


def nests_too_deep(raw: bytes, value: Any) -> bool:
    """Whether ``value``, decoded from ``raw``, nests deeper than :data:`MAX_DEPTH`: deeper than
    every part of the gateway can write again (its encoder stops where its stack does)."""
    # Only a text with that many brackets can nest that deep (a few: none is walked).
    return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH)


def _deeper_than(value: Any, most: int) -> bool:
    """Whether ``value`` nests more than ``most`` levels (the body itself is one), walked level
    by level: no stack, and at most every object and array once (both bounded above)."""
    level = [value]
    for _ in range(most):
        level = [
            inner
            for outer in level
            for inner in (outer.values() if isinstance(outer, dict) else outer)
            if isinstance(inner, dict | list)
        ]
        if not level:
            return False
    return True


def arrays_in(raw: bytes) -> int:
    """How many arrays the JSON text ``raw`` holds: its ``[`` outside strings (taken out
    first, in C, within the body's own size)."""
    return _STRING.sub(b"", raw).count(b"[") if b'"' in raw else raw.count(b"[")


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _TooMany(Exception):
    pass


class _Objects:
    """``json.loads``' object hook for one body: each object's keys all different, and at
    most :data:`MAX_OBJECTS` objects in all (counted as they are read: the rest is not)."""

    def __init__(self) -> None:
        self.left = MAX_OBJECTS

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.left -= 1
        if self.left < 0:
            raise _TooMany
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _Repeated(key)
                seen.add(key)
        return obj


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; one past a float's range is refused, as Ollama's decoder does."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for Ollama to read")
    return value


def _integer(text: str) -> int:
    """A JSON integer; one past a float's range is refused as :func:`_finite` refuses it. Go
    reads a number that is not an integer field's into a float64, which cannot hold it, and
    Python's own limit (4,300 digits) would otherwise say so in its words, advice to call
    ``sys.set_int_max_str_digits()``. Fewer than 309 characters are always in range."""
    if len(text) > 308:
        _finite(text)
    return int(text)


class _Decoder(threading.local):
    """One decoder a thread, its object count set anew for each body: ``json.loads`` given
    hooks made a decoder and its scanner at every call (a body is read on the event loop, or
    in a thread when large, never two at once in one thread)."""

    def __init__(self) -> None:
        self.objects = _Objects()
        self.decoder = json.JSONDecoder(
            parse_constant=_not_json,
            parse_float=_finite,
            parse_int=_integer,
            object_pairs_hook=self.objects,
        )


_DECODER = _Decoder()


def _decoded(raw: bytes) -> Any:
    """``json.loads(raw, ...)`` with this module's hooks: the bytes read as it reads them
    (UTF-8, -16 or -32, by their first bytes), then decoded."""
    mine = _DECODER
    mine.objects.left = MAX_OBJECTS
    return mine.decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
