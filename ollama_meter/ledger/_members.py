"""A line's objects give each key once: the check behind :func:`~ollama_meter.ledger._line.span_from_line`.

JSON readers differ on which value of a key given twice counts (msgspec keeps the last, many
keep the first), so the span such a line means cannot be told; no export writes one. Also
what a line msgspec refuses holds that Python's reader takes: a lone surrogate escape, NaN.
"""

from __future__ import annotations

import json
import re

import msgspec

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
"""An object's members, each value as its bytes in the line (not read: a key a newer export
may have added holds anything, and read, 64 MiB of ``[],`` were a gigabyte of lists)."""
_PLAIN = msgspec.json.Encoder()
_NESTED = ("tags", "cost_parts", "durations_ns")
_KEY = re.compile(rb'[ \t\r\n]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\r\n]*:[ \t\r\n]*')
_AFTER = re.compile(rb"[ \t\r\n]*([,}])")


def each_key_once(line: bytes, known: frozenset[str], written: bytes) -> None:
    """ValueError when an object of ``line`` (valid JSON, an object whose keys outside ``known``
    went unread) gives a key twice.

    ``written`` is what the line was read as, encoded again: a line that is those bytes (the
    common case: no second reading) gives each key once, as the encoder writes each field and
    each key of a dict once. An object whose members are written again as they were (a key
    a newer export added) takes a few microseconds; any other (spaces, escapes, a key twice)
    is walked member by member."""
    if line.startswith(written) and not line[len(written) :].strip():
        return
    body = line.strip()
    members = _MEMBERS.decode(body)
    if _PLAIN.encode(members) == body:
        for key in _NESTED:  # the span's own: read as objects above, so objects here
            if (value := members.get(key)) is not None:
                inner = bytes(value)
                nested = _MEMBERS.decode(inner)
                if _PLAIN.encode(nested) != inner:
                    _walk(inner, nested)
    elif members.keys() <= known:  # each value read by the line's decoder already: again
        json.loads(body, object_pairs_hook=_once, strict=False)
    else:
        _walk(body, members)
        for key in _NESTED:
            if (value := members.get(key)) is not None:
                json.loads(bytes(value), object_pairs_hook=_once, strict=False)


def _once(pairs: list[tuple[str, object]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _twice(key)
        seen.add(key)


def _walk(body: bytes, members: dict[str, msgspec.Raw]) -> None:
    """Each member of the object ``body`` in turn, its value the bytes ``members`` has for its
    key: the last of that key's values. One that is not, or a key seen before, is a key given
    twice."""
    seen: set[str] = set()
    at = body.index(b"{") + 1
    if _AFTER.match(body, at) and not members:
        return  # {}
    while found := _KEY.match(body, at):
        written = found.group(1)
        key = json.loads(b'"%s"' % written) if b"\\" in written else written.decode()
        value = members.get(key)
        at = found.end()
        if key in seen or value is None or not body.startswith(value, at):
            raise _twice(key)
        seen.add(key)
        after = _AFTER.match(body, at + len(value))
        if after is None:
            raise _twice(key)  # a longer value under it: not the last
        if after.group(1) == b"}":
            return
        at = after.end()
    raise ValueError("not JSON: a member of an object is not a key and a value")


def _twice(key: str) -> ValueError:
    return ValueError(
        f"key {_quoted(key)} is given twice in one object: which of its values is meant cannot "
        "be told (an export gives each key once)"
    )


def _quoted(key: str) -> str:
    return repr(key) if len(key) <= 60 else f"{key[:60]!r}... ({len(key):,} characters)"


def lone_surrogate(line: bytes) -> bool:
    """Whether ``line`` is whole JSON to Python's reader and a string of it holds a lone
    surrogate escape, which msgspec refuses (a line whose last string ends in one, it said, was
    cut short). Told by finding one, not by msgspec failing where Python's reader did not: that
    reader takes NaN and the infinities too, and such a line was said to hold a surrogate."""
    try:
        held = json.loads(line, parse_constant=_no_constant)
        json.dumps(held, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a key or a value cannot be UTF-8: it holds one
        return True
    except (ValueError, RecursionError):
        return False
    return False


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is no JSON")


_BYTE = re.compile(r"\(byte (\d+)\)$")
_CONSTANTS = ((-1, b"-Infinity"), (0, b"NaN"), (0, b"Infinity"))
"""Each with where it begins from the byte msgspec names (the I of -Infinity)."""


def no_json_number(line: bytes, said: str) -> str | None:
    """What is wrong with ``line`` when the invalid character msgspec ``said`` it met begins NaN,
    Infinity or -Infinity (Python's ``json.dumps`` writes them for a float that is no number),
    else None."""
    if (found := _BYTE.search(said)) is None:
        return None
    at = int(found.group(1))
    for back, constant in _CONSTANTS:
        if (start := at + back) >= 0 and line.startswith(constant, start):
            return (
                f"not JSON: {constant.decode()} at byte {start + 1} is no number JSON has "
                "(Python's json.dumps writes it for a float that is none): counts and "
                'durations are whole numbers, amounts texts such as "0.031000"'
            )
    return None
