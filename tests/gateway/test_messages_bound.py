"""A hard budget's bound holds every text Ollama's chat reads of a ``/v1/messages`` call.

Ollama makes a chat of the body: the ``system`` text (or its text blocks joined), each
message's text blocks, each tool result a tool message, tool calls, thinking and tool
definitions written by the model's template. The bound counts UTF-8 bytes (no token is
shorter than a byte), so it must count at least every string the chat carries.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.meter._request import facts_of
from ollama_meter.testing._wire import go_json
from tests.gateway.test_responses_bound import call_written

texts = st.text(st.sampled_from("ab <>&é\u2028"), max_size=30)
blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": texts, "content": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": texts,
            "content": st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts})),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": texts,
            "name": texts,
            "input": st.dictionaries(texts, texts),
        }
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": texts, "signature": texts}),
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]), "content": texts | st.lists(blocks)}
    ),
    min_size=1,
    max_size=4,
)
systems = (
    st.none() | texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}))
)


def strings(value: Any, key: str = "") -> int:
    """UTF-8 bytes of every string the chat carries: not a block's type or a role, nor the
    body's keys, but a tool call's argument names."""
    if isinstance(value, str):
        return 0 if key in ("type", "role") else len(value.encode())
    if isinstance(value, dict):
        names = sum(len(k.encode()) for k in value) if key == "input" else 0
        return names + sum(strings(v, k) for k, v in value.items())
    if isinstance(value, list):
        return sum(strings(item, key) for item in value)
    return 0


@settings(max_examples=200, deadline=None)
@given(system=systems, messages=messages)
def test_the_bound_counts_every_text_of_the_chat_ollama_makes(system: Any, messages: Any) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": messages}
    if system is not None:
        body["system"] = system
    facts = facts_of("anthropic.messages", body)

    assert facts.prompt_bytes >= strings(messages) + strings(system)
    assert facts.messages >= len(messages) + sum(
        1 for m in messages if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"
    )  # fmt: skip
    assert facts.max_output == 10


WEB_SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information. Use this to find up-to-date "
        "information about any topic.",
        "parameters": {
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {"type": "string", "description": "The search query to look up on the web"}
            },
        },
    },
}
"""The tool Ollama writes for Anthropic's built-in web search, whatever the request said of it."""


def api_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Messages tool as Ollama hands it to the template (``convertTool``)."""
    if str(tool.get("type", "")).startswith("web_search"):
        return WEB_SEARCH
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    schema = tool.get("input_schema") or {}
    function["parameters"] = {
        "type": schema.get("type", ""),
        "properties": schema.get("properties"),
    }
    return {"type": "function", "function": function}


def tool_message(content: Any) -> int:
    """Bytes of the tool message Ollama makes of a web search result block (its ``- title:
    url`` lines, or the JSON of anything else), at least."""
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(
            len(f"- {r.get('title', '')}: {r.get('url', '')}\n".encode())
            for r in content
            if isinstance(r, dict) and r.get("type") == "web_search_result"
        )
    return len(go_json(content))


def template_writes(body: dict[str, Any]) -> int:
    """Bytes the template writes of the tools, the calls and the search results."""
    size = sum(len(go_json(api_tool(tool))) for tool in body.get("tools", []))
    for message in body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block["type"] in ("tool_use", "server_tool_use"):
                size += call_written(block.get("name", ""), block.get("input") or {})
            elif block["type"] == "web_search_tool_result":
                size += tool_message(block.get("content"))
    return size


calls = st.builds(
    lambda kind, name, arguments: {"type": kind, "id": "t", "name": name, "input": arguments},
    st.sampled_from(["tool_use", "server_tool_use"]),
    texts,
    st.dictionaries(texts, texts, max_size=2),
)
results = st.builds(
    lambda content: {"type": "web_search_tool_result", "tool_use_id": "t", "content": content},
    texts
    | st.lists(
        st.fixed_dictionaries({"type": st.just("web_search_result"), "title": texts, "url": texts}),
        max_size=3,
    )
    | st.fixed_dictionaries({"type": st.just("web_search_tool_result_error"), "error_code": texts}),
)
tool_lists = st.lists(
    st.fixed_dictionaries(
        {"name": texts, "description": texts, "input_schema": st.just({"type": "object"})}
    )
    | st.just({"type": "web_search_20250305", "name": "web_search"}),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(calls | results, max_size=4), tools=tool_lists)
@example(blocks=[], tools=[{"type": "web_search_20250305", "name": "web_search"}] * 4)
@example(blocks=[{"type": "tool_use", "id": "t", "name": "", "input": {}}] * 50, tools=[])
@example(blocks=[{"type": "tool_use", "id": "t", "name": "<" * 40, "input": {}}], tools=[])
@example(
    blocks=[
        {
            "type": "web_search_tool_result",
            "tool_use_id": "t",
            "content": [{"type": "web_search_result", "title": "a" * 400, "url": "b"}],
        }
    ],
    tools=[],
)
def test_the_bound_holds_tools_calls_and_search_results_as_ollamas_template_writes_them(
    blocks: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> None:
    """Fifty tool calls of no name counted a few bytes each where a template writes each in
    45 or more; a web search result's titles and URLs, which Ollama makes a tool message
    of, counted nothing; a built-in web search tool counted as the 50 bytes the request
    spelled, where Ollama writes its own definition of it (313)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": blocks}]
    body = {"model": "m", "max_tokens": 10, "messages": messages, "tools": tools}
    bound = facts_of("anthropic.messages", body).bound(0)
    assert bound.input_tokens >= template_writes(body) + len("hi")
