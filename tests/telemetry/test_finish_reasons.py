"""An output message's ``finish_reason`` is the conventions' value where one applies.

The GenAI conventions' output message schema names why generation ended in its own words
(``stop``, ``length``, ``content_filter``, ``tool_call``, ``error``), a provider's own only
where none of them applies. ometer sent each wire format's word as it came: an Anthropic
reply ended ``end_turn`` or ``tool_use``, a Responses reply ``completed``, an OpenAI one
``tool_calls``; and Ollama's ``stop`` for a reply that only called tools. A backend grouping
replies by the conventions' reasons (or counting tool calls) saw four words for one reason.
``gen_ai.response.finish_reasons`` keeps the provider's own words, as the conventions have it.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.records import Status
from ollama_meter.telemetry import _semconv as sc
from tests.telemetry.test_content_shape import _exported

CALL = (("call_1", "get_weather", {"city": "Paris"}),)
CONVENTIONS = {"stop", "length", "content_filter", "tool_call", "error"}
SAID = {
    # Ollama's native routes, and OpenAI's Chat Completions and Completions
    "stop": "stop", "length": "length", "tool_calls": "tool_call",
    "function_call": "tool_call", "content_filter": "content_filter",
    # Anthropic's Messages
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
    "tool_use": "tool_call", "refusal": "content_filter",
    "model_context_window_exceeded": "length",
    # the Responses API: its status, else why it is incomplete
    "completed": "stop", "max_output_tokens": "length",
}  # fmt: skip


def _output(**fields: object) -> tuple[dict[str, object], list[str] | None]:
    attributes = _exported(None, prompt="hi", **fields)
    (message,) = json.loads(str(attributes[sc.GEN_AI_OUTPUT_MESSAGES]))
    reasons = attributes.get(sc.GEN_AI_RESPONSE_FINISH_REASONS)
    return message, None if reasons is None else list(reasons)


@pytest.mark.parametrize("said", sorted(SAID))
@pytest.mark.parametrize("called", [False, True])
def test_a_providers_reason_is_the_conventions_own(said: str, called: bool) -> None:
    message, reasons = _output(reply="ok", done_reason=said, called=CALL if called else ())
    expected = SAID[said]
    if called and expected == "stop":  # the reply ended to call a tool
        expected = "tool_call"
    assert message["finish_reason"] == expected
    assert reasons == [said]  # the provider's own words


@settings(max_examples=60, deadline=None)
@given(said=st.text(min_size=1, max_size=40).filter(lambda s: s not in SAID))
def test_a_reason_the_conventions_have_no_word_for_is_kept(said: str) -> None:
    """Ollama's ``load`` and ``unload``, a provider's new word: as said (cut, cleaned)."""
    message, _ = _output(reply="ok", done_reason=said)
    assert message["finish_reason"] not in CONVENTIONS - {said}


@pytest.mark.parametrize("status", list(Status))
def test_a_call_that_did_not_say_why_ends_stop_or_error(status: Status) -> None:
    message, _ = _output(reply="ok", done_reason=None, status=status)
    assert message["finish_reason"] == ("stop" if status == Status.OK else "error")
