"""Which items of a stream restart the upstream silence timeout: those that carry data.

An item with nothing in it (a blank line, ``{}``; an SSE comment, an event with no data or
with ``data: {}``) is a keep-alive, however often it comes. Through the gateway:
``tests/gateway/test_hostile_transport.py``.
"""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from ollama_meter.upstream import Frames

blank = st.text(" \t", max_size=3).map(str.encode)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
objects = st.dictionaries(st.text(max_size=8), values, min_size=1, max_size=4)


@given(left=blank, middle=blank, right=blank)
def test_an_empty_item_carries_nothing(left: bytes, middle: bytes, right: bytes) -> None:
    empty = left + b"{" + middle + b"}" + right
    assert not Frames(b"\n", host="h").carries(empty)
    assert not Frames(b"\n", host="h").carries(left + right)
    sse = Frames(b"\n\n", host="h")
    assert not sse.carries(b"data:" + empty)
    assert not sse.carries(b": keep-alive\nevent: ping\ndata:" + empty + b"\ndata:" + left)


@given(obj=objects, before=st.sampled_from([b"", b"event: x\n", b": c\nid: 7\n"]), left=blank)
def test_an_item_with_a_member_carries_data(
    obj: dict[str, object], before: bytes, left: bytes
) -> None:
    item = json.dumps(obj).encode()
    assert Frames(b"\n", host="h").carries(left + item)
    assert Frames(b"\n\n", host="h").carries(before + b"data:" + left + item)
    assert Frames(b"\n\n", host="h").carries(before + b"data: {}\ndata:" + left + item)
