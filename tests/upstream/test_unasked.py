"""A usage the client did not ask for is cut out of a chunk, the rest left as Ollama wrote it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st

from ollama_meter.upstream._unasked import without_usage

ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
scalars = st.none() | st.booleans() | st.integers() | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def test_ollamas_own_bytes_are_kept_but_for_the_usage() -> None:
    frame = (
        b'data: {"id":"cmpl-7","object":"text_completion","created":1,"choices":[{"text":'
        b'" \\"usage\\":","index":0,"finish_reason":null}],"model":"m","system_fingerprint":'
        b'"fp_ollama","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}'
    )
    obj = json.loads(frame[6:])
    assert without_usage(frame, obj) == frame[: frame.index(b',"usage":{')] + b"}"


@given(
    st.dictionaries(st.text().filter(lambda k: k != "usage"), values, max_size=4),
    values,
    st.integers(0, 4),
    st.booleans(),
)
def test_whatever_the_chunk_the_client_gets_it_without_its_usage(
    rest: dict[str, Any], usage: Any, where: int, compact: bool
) -> None:
    items = list(rest.items())
    items.insert(min(where, len(items)), ("usage", usage))
    obj = dict(items)
    separators = (",", ":") if compact else (", ", ": ")
    frame = b"data: " + json.dumps(obj, separators=separators, ensure_ascii=False).encode()
    assert json.loads(without_usage(frame, obj)[len(b"data: ") :]) == rest
