"""A hard budget's bound holds the prompt Ollama writes of a ``/v1/responses`` call's tools.

The bound counts a prompt's UTF-8 bytes (no token is shorter than a byte). Ollama does
not write a tool, or a call of one, as the request spelled it: it decodes each into its
Go struct (``api.Tool``, a call's arguments parsed) and the model's template writes it
with Go's ``json.Marshal``, which adds the struct's own keys, escapes ``<``, ``>`` and
``&`` (six bytes for one) and writes a number as the float64 it read (``1e20`` in 21
bytes). Counted as the request's bytes, a tool list of ``<`` was admitted at a sixth of
what it could cost.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.meter._request import facts_of
from ollama_meter.testing._wire import go_json

texts = st.text(st.sampled_from("ab <>&\u2028é"), max_size=40)


def api_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Responses tool as Ollama hands it to the template: its ``api.Tool`` (``convertTool``)."""
    parameters = tool.get("parameters") or {}
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = {
        "type": parameters.get("type", ""),
        **({"required": parameters["required"]} if parameters.get("required") else {}),
        "properties": parameters.get("properties"),
    }
    return {"type": tool.get("type", ""), "function": function}


def go_float(number: float) -> str:
    """A float64 as Go's ``json.Marshal`` writes it: plain from 1e-6 to 1e21, else with an
    exponent (``1e20`` is ``100000000000000000000``)."""
    if number == 0 or not 1e-6 <= abs(number) < 1e21:
        return repr(number).replace("e-0", "e-").replace("e+0", "e+")
    plain = format(Decimal(repr(number)), "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


def go_written(value: Any) -> int:
    """Bytes of ``value`` as Go writes it (a number read as a float64, written again)."""
    numbers: list[float] = []

    def zeroed(item: Any) -> Any:
        if isinstance(item, dict):
            return {key: zeroed(member) for key, member in item.items()}
        if isinstance(item, list):
            return [zeroed(member) for member in item]
        if isinstance(item, float):
            numbers.append(item)
            return 0
        return item

    return len(go_json(zeroed(value))) + sum(len(go_float(n)) - 1 for n in numbers)


def call_written(name: str, arguments: Any) -> int:
    """Bytes a template writes of one tool call: qwen2.5's, for one, wraps each call as
    ``<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>``."""
    return len('<tool_call>\n{"name": , "arguments": }\n</tool_call>') + (
        len(go_json(name)) + go_written(arguments)
    )


def written(body: dict[str, Any]) -> int:
    """Bytes the template writes of the tools and the calls, as JSON (at least)."""
    size = sum(go_written(api_tool(tool)) for tool in body.get("tools", []))
    for item in body["input"]:
        if item.get("type") == "function_call":
            size += call_written(item.get("name", ""), json.loads(item.get("arguments") or "{}"))
    return size


ENUM = {"type": "object", "properties": {"a": {"type": "number", "enum": [1e20] * 20}}}


tools = st.lists(
    st.builds(
        lambda name, description, properties: {
            "type": "function",
            "name": name,
            **({"description": description} if description else {}),
            **({"parameters": {"type": "object", "properties": properties}} if properties else {}),
        },
        texts,
        texts,
        st.dictionaries(
            texts,
            st.builds(
                lambda d, enum: {"type": "string", "description": d, "enum": enum},
                texts,
                st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
            ),
            max_size=2,
        ),
    )
    | st.just({}),
    max_size=4,
)
calls = st.lists(
    st.builds(
        lambda name, arguments: {
            "type": "function_call",
            "call_id": "c",
            "name": name,
            "arguments": json.dumps(arguments),
        },
        texts,
        st.dictionaries(texts, texts, max_size=2),
    ),
    max_size=3,
)


@settings(max_examples=300)
@given(tools=tools, calls=calls)
@example(tools=[{"type": "function", "name": "<" * 40}], calls=[])  # 40 bytes sent, 240 written
@example(tools=[{}] * 4, calls=[])  # 2 bytes sent, 76 written: {"type":"","function":{...
@example(tools=[], calls=[{"type": "function_call", "arguments": json.dumps({"a": "&" * 40})}])
@example(tools=[{"type": "function", "name": "f", "parameters": ENUM}], calls=[])  # 5 bytes, 21
@example(tools=[], calls=[{"type": "function_call", "name": "", "arguments": "{}"}] * 50)
def test_the_bound_holds_the_tools_and_calls_as_ollamas_template_writes_them(
    tools: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> None:
    """Fifty calls of no name and no arguments counted 8 tokens each (a message's markers)
    where a template writes each in 45 bytes or more."""
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}, *calls], "tools": tools}
    bound = facts_of("openai.responses", body).bound(0)
    assert bound.input_tokens >= written(body) + len("hi")
    # The same calls in a chat's assistant message, as /api/chat and /v1/chat/completions send.
    tool_calls = [
        {"function": {"name": c.get("name", ""), "arguments": json.loads(c["arguments"])}}
        for c in calls
    ]
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": tool_calls}]
    bound = facts_of("chat", {"model": "m", "messages": chat, "tools": tools}).bound(0)
    assert bound.input_tokens >= written(body) + len("hi")
