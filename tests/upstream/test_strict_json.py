"""An answer's JSON is read by msgspec first, and exactly as Python's strict reading reads it.

``json_object`` reads every item of every stream and every whole answer: msgspec first (a fifth
of the time), Python's decoder for what msgspec refuses. Whatever the bytes, the result is the
one Python's decoder alone gave: the same object, or None where a client could not read it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.upstream._strict import json_object


def _reference(payload: bytes) -> dict[str, Any] | None:
    """The reading before msgspec: Python's decoder, strict UTF-8, no BOM, no NaN."""

    def not_json(name: str) -> None:
        raise ValueError(name)

    try:
        text = payload.decode("utf-8")
        if text.startswith("\ufeff"):
            return None
        obj = json.JSONDecoder(parse_constant=not_json).decode(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0; NaN-free floats)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))  # type: ignore[arg-type]
    return a == b


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, categories=None), max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    value = draw(st.dictionaries(st.text(max_size=6), _values, max_size=5) | _values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.just(1)))
    payload = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 2))):  # damage: a byte changed, cut or added
        if not payload:
            break
        at = draw(st.integers(0, len(payload) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        how = draw(st.sampled_from(["set", "cut", "add"]))
        tail = payload[at + 1 :] if how != "add" else payload[at:]
        payload = payload[:at] + (b"" if how == "cut" else byte) + tail
    return payload


@settings(max_examples=600, deadline=None)
@given(payload=_payloads())
@example(payload=b'{"a": "\\ud800"}')  # an escaped lone surrogate: msgspec refuses, Python takes
@example(payload=b'{"a": 1e400}')  # Python reads infinity
@example(payload=b'\xef\xbb\xbf{"a": 1}')  # a BOM
@example(payload=b'{"a": NaN}')
@example(payload=b'{"a": 1, "a": 2}')  # the last one wins, in both
@example(payload=b'{"a": 123456789012345678901234567890}')
@example(payload=b"[" * 3000 + b"]" * 3000)
@example(payload=b'{"\xff": 1}')
def test_an_answer_is_read_as_pythons_strict_decoder_reads_it(payload: bytes) -> None:
    assert _same(json_object(payload), _reference(payload))
