"""A request that asks for a kind of reply says so: ``gen_ai.output.type``.

The conventions make ``gen_ai.output.type`` conditionally required on an inference span: set
where the request includes an output format (``json`` for a JSON reply, ``text`` for text).
ometer never set it: a call that asked Ollama for ``format: "json"`` (or a schema), OpenAI's
``response_format`` or a Responses request's ``text.format`` looked like any other.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.meter._request import facts_of
from ollama_meter.telemetry import _semconv as sc
from tests._observed import observed
from tests.factories import make_span

HI = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
BODIES: list[tuple[str, dict[str, Any], str | None]] = [
    ("chat", {"messages": HI, "format": "json"}, "json"),
    ("chat", {"messages": HI, "format": SCHEMA}, "json"),
    ("chat", {"messages": HI}, None),
    ("chat", {"messages": HI, "format": ""}, None),
    ("generate", {"prompt": "hi", "format": "json"}, "json"),
    ("generate", {"prompt": "hi", "format": SCHEMA}, "json"),
    ("openai.chat", {"messages": HI, "response_format": {"type": "json_object"}}, "json"),
    ("openai.chat", {"messages": HI, "response_format": {"type": "json_schema",
                                                          "json_schema": {"schema": SCHEMA}}},
     "json"),
    ("openai.chat", {"messages": HI, "response_format": {"type": "text"}}, "text"),
    ("openai.chat", {"messages": HI}, None),
    ("openai.responses", {"input": "hi", "text": {"format": {"type": "json_schema",
                                                               "schema": SCHEMA}}}, "json"),
    ("openai.responses", {"input": "hi", "text": {"format": {"type": "text"}}}, "text"),
    ("openai.responses", {"input": "hi"}, None),
    ("anthropic.messages", {"messages": HI, "max_tokens": 5}, None),
    ("anthropic.messages", {"messages": HI, "response_format": {"type": "json_object"}}, None),
]  # fmt: skip


def _output_type(operation: str, body: dict[str, Any]) -> Any:
    span = make_span(operation=operation, asked=facts_of(operation, body).asked)
    return dict(observed(span).attributes or {}).get(sc.GEN_AI_OUTPUT_TYPE)


@pytest.mark.parametrize(("operation", "body", "expected"), BODIES)
def test_a_requested_output_format_is_the_spans_output_type(
    operation: str, body: dict[str, Any], expected: str | None
) -> None:
    assert _output_type(operation, {"model": "llama3.1:8b", **body}) == expected


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    operation=st.sampled_from(["chat", "generate", "openai.chat", "openai.responses"]),
    field=st.sampled_from(["format", "response_format", "text"]),
    value=ANYTHING | st.fixed_dictionaries({"type": ANYTHING}),
)
def test_any_format_a_caller_sends_is_a_known_output_type_or_none(
    operation: str, field: str, value: Any
) -> None:
    """Whatever the caller sent there: ``json``, ``text`` or nothing, never its own words."""
    body = {"model": "llama3.1:8b", "messages": HI, "prompt": "hi", "input": "hi", field: value}
    assert _output_type(operation, body) in (None, "json", "text")
