"""What a hard budget's bound counts for the sounds and thin pictures in a request (``_heard``)
is read by walking the body; the dicts, lists, numbers and ``null`` JSON makes are taken by
their exact type first. Any body counts the same as the same body made of other mappings and
sequences (which take the general way), WAVs and pictures anywhere in it included."""

from __future__ import annotations

import base64
import struct
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings, strategies as st

from ollama_meter.meter._request import _heard
from tests.meter.test_audio_bound import wav


def _png(width: int, height: int) -> str:
    head = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
    )
    return base64.b64encode(head + b"\x08\x02\x00\x00\x00" + b"\x00" * 16).decode()


_SOUND = base64.b64encode(wav(90 * 1_000, 1_000)).decode()
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from([_SOUND, f"data:audio/wav;base64,{_SOUND}", _png(1, 4_000_000), _png(40, 30)]),
)
_KEYS = st.sampled_from(["images", "Images", "messages", "content", "image_url", "url", "x"])
_BODIES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)


def _general(value: Any) -> Any:
    """The same body made of a read-only mapping and tuples: not dict, not list."""
    if isinstance(value, dict):
        return MappingProxyType({key: _general(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_general(item) for item in value)
    return value


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(_KEYS, _BODIES, max_size=4))
def test_a_body_counts_the_same_whatever_mappings_and_sequences_hold_it(
    body: dict[str, Any],
) -> None:
    assert _heard(body) == _heard(_general(body))
