"""What a request's pieces weigh as Ollama writes them (``meter/_written.py``): exactly what
an encoder writes, whatever shortcut the count takes for the plain values a body holds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, strategies as st

from ollama_meter.meter._written import (
    _SCHEMA_BYTES,
    TOOL_BYTES,
    json_bytes,
    parts_in,
    tools_bytes,
    written_bytes,
)

GO_ESCAPED = frozenset("<>&\u2028\u2029")
"""What Go's ``json.Marshal`` writes as ``\\uXXXX``: six bytes each."""

texts = st.text(st.characters(codec=None, exclude_categories=()))  # surrogates and controls too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


with_json_texts = st.recursive(
    json_values | st.builds(json.dumps, json_values),  # a call's arguments: JSON in a string
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=12,
)


def go_written(text: str) -> int:
    return sum(6 if c in GO_ESCAPED else len(c.encode("utf-8", "surrogatepass")) for c in text)


@given(texts)
@example("<b>&amp;</b>")
@example("line\u2028paragraph\u2029")
@example("caf\u00e9 \ud800")
def test_written_bytes_are_what_go_writes(text: str) -> None:
    assert written_bytes(text) == go_written(text)


@given(json_values)
@example({"type": "function", "function": {"name": "get_weather", "parameters": {}}})
@example(['\x00\n\t"\\', True, None, -(2**70)])
def test_json_bytes_of_a_json_value_are_its_encoding(value: Any) -> None:
    # With no float (counted at its longest), the count is the encoding, Go's escapes included
    # (in a list: a field that is None, absent, counts nothing).
    assert json_bytes([value]) == go_written(json.dumps([value], ensure_ascii=False))


def test_a_python_function_as_a_tool_still_counts_as_its_schema() -> None:
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return city

    texts = ("get_weather", "The weather now in a city.", "city")
    schema = _SCHEMA_BYTES + 64 + sum(len(t) for t in texts)
    assert tools_bytes([get_weather]) == 2 + schema + TOOL_BYTES


def members(value: Any) -> int:
    """Members of every list and object in ``value``, a string of JSON read as its value."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return members(json.loads(value))
        except ValueError:
            return 0
    if isinstance(value, dict):
        return len(value) + sum(map(members, value.values()))
    if isinstance(value, list):
        return len(value) + sum(map(members, value))
    return 0


@given(with_json_texts)
@example([{"function": {"arguments": '{"city": "Paris", "days": [1, 2]}'}}, "[not json", "{}"])
def test_parts_in_counts_every_member_json_in_strings_too(value: Any) -> None:
    assert parts_in(value) == members(value)
