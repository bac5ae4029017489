"""A hard budget's bound of a ``/v1/chat/completions`` body holds every byte Ollama's OpenAI
layer hands the model's template, whatever shape the body takes.

Hypothesis builds chat bodies (text or lists of text and image parts, reasoning, tool calls
with their arguments as a JSON string, tool results named by ``name`` or only by
``tool_call_id``) and reads each as Ollama's ``FromChatRequest`` does: a message per content
part, a call's arguments parsed and written again by Go (a float64 ``1e20`` comes back as
``100000000000000000000``), a tool result given the name of the call its id points to. The
texts, names and arguments a template may write must fit in the bound's bytes, each message
in its count, each picture in its images.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.meter._request import facts_of


class _Literal(str):
    """JSON spelled as the caller spelled it (``1e20``), not as Python would."""


IDS = st.sampled_from(["c1", "c2", "call_3"])
TEXT = st.text(max_size=12)
VALUES = st.one_of(
    TEXT,
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.sampled_from(["1e20", "1E+20", "-2.5e20", "1e-7", "0.1", "123456789e12"]).map(_Literal),
)
NUMBERS = st.lists(
    st.sampled_from(["1e20", "1E+20", "-2.5e20", "9e20"]).map(_Literal),
    max_size=40,
).map(lambda numbers: _Literal("[" + ",".join(numbers) + "]"))


def _arguments(values: dict[str, Any]) -> str:
    parts = [
        f"{json.dumps(key)}:{value if isinstance(value, _Literal) else json.dumps(value)}"
        for key, value in values.items()
    ]
    return "{" + ",".join(parts) + "}"


CALLS = st.lists(
    st.builds(
        lambda call_id, name, values: {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": _arguments(values)},
        },
        IDS,
        st.text(max_size=40),
        st.dictionaries(st.text(max_size=4), st.one_of(VALUES, NUMBERS), max_size=4),
    ),
    max_size=3,
)
PART = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, TEXT),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
)
CONTENT = st.one_of(TEXT, st.lists(PART, min_size=1, max_size=3))
MESSAGE = st.one_of(
    st.builds(lambda role, content: {"role": role, "content": content},
              st.sampled_from(["user", "system"]), CONTENT),
    st.builds(
        lambda content, reasoning, calls: {
            "role": "assistant",
            "content": content,
            **({"reasoning": reasoning} if reasoning else {}),
            **({"tool_calls": calls} if calls else {}),
        },
        st.one_of(st.none(), CONTENT),
        TEXT,
        CALLS,
    ).filter(lambda m: m["content"] is not None or m.get("tool_calls")),
    st.builds(
        lambda role, content, call_id, name: {
            "role": role,
            "content": content,
            "tool_call_id": call_id,
            **({"name": name} if name is not None else {}),
        },
        st.sampled_from(["tool", "Tool"]),
        TEXT,
        IDS,
        st.one_of(st.none(), TEXT),
    ),
)  # fmt: skip


def _go_written(arguments: str) -> int:
    """The bytes Go writes of a call's arguments once it has read them (into a map of ``any``:
    every number a float64) and marshals them again, compact, ``<``, ``>`` and ``&`` escaped."""
    parsed = json.loads(arguments, parse_int=float)
    text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"), default=str)
    numbers = [v for v in parsed.values() if isinstance(v, float)]
    numbers += [n for v in parsed.values() if isinstance(v, list) for n in v]
    for number in numbers:
        text += " " * max(len(_go_float(number)) - len(json.dumps(number)), 0)
    escaped = sum(text.count(c) for c in "<>&")
    return len(text.encode()) + 5 * escaped


def _go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it: plain digits from 1e-6 up to 1e21."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def _ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages ``FromChatRequest`` makes: texts, thinking, calls, tool names, images."""

    def name_of(call_id: str) -> str:
        for message in reversed(messages):
            for call in message.get("tool_calls") or []:
                if call["id"] == call_id:
                    return str(call["function"]["name"])
        return ""

    made: list[dict[str, Any]] = []
    for message in messages:
        tool_name = ""
        if message["role"].lower() == "tool":
            tool_name = message.get("name") or ""
            if not tool_name and message.get("tool_call_id"):
                tool_name = name_of(message["tool_call_id"])
        calls = [
            (c["function"]["name"], _go_written(c["function"]["arguments"]))
            for c in message.get("tool_calls") or []
        ]
        content = message["content"]
        if isinstance(content, str):
            made.append(
                {
                    "text": content,
                    "thinking": message.get("reasoning", ""),
                    "calls": calls,
                    "tool_name": tool_name,
                    "images": 0,
                }
            )
        elif isinstance(content, list):
            for part in content:
                image = part["type"] == "image_url"
                made.append(
                    {
                        "text": "" if image else part["text"],
                        "thinking": "",
                        "calls": [],
                        "tool_name": "",
                        "images": int(image),
                    }
                )
            if calls:
                made[-1].update(
                    calls=calls, tool_name=tool_name, thinking=message.get("reasoning", "")
                )
        else:
            made.append(
                {
                    "text": "",
                    "thinking": message.get("reasoning", ""),
                    "calls": calls,
                    "tool_name": "",
                    "images": 0,
                }
            )
    return made  # fmt: skip


LONG_NAMED_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "n" * 40, "arguments": "{}"}}
    ],
}
FLOATS = '{"a": [' + ",".join(["1e20"] * 30) + "]}"


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGE, min_size=1, max_size=16))
@example([LONG_NAMED_CALL, *[{"role": "tool", "content": "", "tool_call_id": "c1"}] * 15])
@example(
    [
        {
            **LONG_NAMED_CALL,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": FLOATS}}
            ],
        }
    ]
)
def test_the_bound_holds_what_ollamas_openai_layer_hands_the_template(
    messages: list[dict[str, Any]],
) -> None:
    facts = facts_of("openai.chat", {"model": "m", "messages": messages})
    made = _ollama_messages(messages)
    written = sum(
        len(m["text"].encode())
        + len(m["thinking"].encode())
        + len(m["tool_name"].encode())
        + sum(len(name.encode()) + arguments for name, arguments in m["calls"])
        for m in made
    )
    assert facts.prompt_bytes >= written
    assert facts.messages >= len(made)
    assert facts.images == sum(m["images"] for m in made)


def test_a_responses_function_calls_arguments_count_as_go_writes_them_again() -> None:
    """``/v1/responses`` parses a ``function_call`` item's arguments as the chat route does."""
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": FLOATS}
    facts = facts_of("openai.responses", {"model": "m", "input": [item]})
    assert facts.prompt_bytes >= len('{"a":[' + ",".join(["1" + "0" * 20] * 30) + "]}")
