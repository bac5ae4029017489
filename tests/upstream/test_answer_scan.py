"""AnswerScan reads a whole answer's top-level members as json.loads does, however it is cut."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st

from ollama_meter.upstream._answer import KEPT_CHARS, NOT_KEPT, AnswerScan

_scalars = st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.text(max_size=20)
_small = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_vectors = st.lists(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=6), max_size=4
)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _scan(operation: str, pieces: list[bytes]) -> dict[str, Any] | None:
    scan = AnswerScan(operation, host="http://ollama")
    for piece in pieces:
        scan.feed(piece)
    return scan.end()


@given(
    st.dictionaries(
        st.text(max_size=12).filter(lambda k: "." not in k and k != "embeddings"),
        _small,
        max_size=6,
    ),
    _vectors,
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_the_members_read_are_json_loads_own_with_the_vectors_not_kept(
    members: dict[str, Any], vectors: list[list[float]], cuts: list[int]
) -> None:
    answer = {**members, "embeddings": vectors, **members}
    data = json.dumps(answer).encode()
    expected = json.loads(data)
    if vectors:
        expected["embeddings"] = [NOT_KEPT]
    assert _scan("embed", _cut(data, cuts)) == expected


@given(st.lists(st.integers(0, 400), max_size=5), st.integers(1, 300))
def test_an_answer_that_is_not_whole_json_reads_as_none(cuts: list[int], short: int) -> None:
    data = json.dumps({"embeddings": [[0.5] * 20], "prompt_eval_count": 12}).encode()
    assert _scan("embed", _cut(data[:-short], cuts)) is None
    assert _scan("embed", _cut(data + b"x", cuts)) is None


def test_the_openai_vectors_are_not_kept_and_the_usage_is() -> None:
    data = json.dumps({
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.25] * 9, "index": 0}],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }).encode()  # fmt: skip
    assert _scan("openai.embeddings", [data]) == {
        "object": "list",
        "data": [NOT_KEPT],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_members_past_the_bound_are_not_kept_so_the_counts_are_estimated() -> None:
    """A lying upstream's huge extra member does not fill memory: nothing but the vectors, and
    that an error came, is read; no count is made up."""
    data = json.dumps({
        "embeddings": [[0.5]],
        "padding": ["x" * 1000] * (KEPT_CHARS // 1000 + 1),
        "prompt_eval_count": 12,
        "error": "boom",
    }).encode()  # fmt: skip
    assert _scan("embed", [data]) == {
        "embeddings": [NOT_KEPT],
        "error": "an error too long to read",
    }
