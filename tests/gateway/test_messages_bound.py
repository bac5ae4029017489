"""A hard budget's bound holds every text Ollama's chat reads of a ``/v1/messages`` call.

Ollama makes a chat of the body: the ``system`` text (or its text blocks joined), each
message's text blocks, each tool result a tool message, tool calls, thinking and tool
definitions written by the model's template. The bound counts UTF-8 bytes (no token is
shorter than a byte), so it must count at least every string the chat carries.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from ollama_meter.meter._request import facts_of

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
