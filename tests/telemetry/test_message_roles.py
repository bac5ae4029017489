"""Exported prompts keep who said what: each message its role, instructions apart.

The GenAI conventions give ``gen_ai.input.messages`` as the chat history, each message with
its role in the order sent, and ``gen_ai.system_instructions`` for instructions a request
gives apart from its messages (a generate's ``system``, Anthropic's ``system``, a Responses
request's ``instructions``). ometer exported every text of a request joined into one
``user`` message: a chat's system prompt and the assistant's earlier turns read as the user's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st
from opentelemetry.trace import StatusCode

from ollama_meter import MeteredClient, load_settings
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from ollama_meter.records import Status, storable_text
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT
from ollama_meter.testing import OllamaEmulator
from tests._observed import observed
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span

SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
TEXT = st.text(max_size=40)
EMPTY = {
    "role": "user",
    "parts": [{"type": "text", "content": ""}],
}  # line breaks, NULs and lone surrogates among them


def _exported(operation: str, body: dict[str, Any], limit: int | None = None) -> dict[str, Any]:
    """The attributes exported for a call with ``body``, its prompt as the meter keeps it."""
    facts = facts_of(operation, body)
    span = make_span(operation=operation, prompt=facts.prompt_text, said=facts.said)
    return dict(observed(span, capture_content=True, max_length=limit).attributes or {})


def _said(role: str, *texts: str) -> dict[str, Any]:
    """A message's parts: a ``tool`` message's texts are the results of calls."""
    clean = [storable_text(t, len(t) + 1) for t in texts if t]
    if role == "tool":
        return {
            "role": role,
            "parts": [{"type": "tool_call_response", "response": t} for t in clean],
        }
    return {"role": role, "parts": [{"type": "text", "content": t} for t in clean]}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ROLES, TEXT), max_size=8))
@example([("system", "You are terse."), ("user", "hi"), ("assistant", "hello"), ("user", "ok")])
@example([("user", "a\nb"), ("assistant", "\n"), ("user", "\x00\ud800")])
def test_a_chat_exports_each_message_with_its_role(messages: list[tuple[str, str]]) -> None:
    body = {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}
    for operation in ("chat", "openai.chat"):
        a = _exported(operation, body)
        # No text at all: one empty user message, as an empty prompt has always been
        expected = [_said(role, text) for role, text in messages if text] or [EMPTY]
        assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == expected
        assert SYSTEM_INSTRUCTIONS not in a  # a system message is chat history


@settings(max_examples=100, deadline=None)
@given(prompt=TEXT, system=TEXT, suffix=TEXT)
@example(prompt="write a poem", system="be a pirate", suffix="")
def test_a_generate_exports_its_system_apart(prompt: str, system: str, suffix: str) -> None:
    a = _exported("generate", {"model": "m", "prompt": prompt, "system": system, "suffix": suffix})
    user = _said("user", prompt, suffix)
    if user["parts"]:
        assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == [user]
    elif not system:
        assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == [EMPTY]
    else:
        assert sc.GEN_AI_INPUT_MESSAGES not in a  # instructions alone: no history
    if system:
        assert json.loads(a[SYSTEM_INSTRUCTIONS]) == _said("x", system)["parts"]
    else:
        assert SYSTEM_INSTRUCTIONS not in a


def test_anthropic_and_responses_instructions_are_apart_and_tool_results_are_tools() -> None:
    a = _exported(
        "anthropic.messages",
        {
            "system": "be brief",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": "rain"}],
                },
            ],
        },
    )
    assert json.loads(a[SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "be brief"}]
    assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == [
        _said("user", "weather?"),
        _said("tool", "rain"),
    ]
    a = _exported(
        "openai.responses",
        {
            "instructions": "be kind",
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "c", "output": "42"},
            ],
        },
    )
    assert json.loads(a[SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "be kind"}]
    assert json.loads(a[sc.GEN_AI_INPUT_MESSAGES]) == [_said("user", "hi"), _said("tool", "42")]


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.tuples(ROLES, st.text(min_size=1, max_size=400)), min_size=1, max_size=6),
    limit=st.integers(0, 600) | st.just(MAX_EXPORTED_TEXT),
)
@example(
    messages=[("system", "0"), ("system", "00")], limit=65
)  # dropped both: the newest fits cut
@example(messages=[("user", "\x07" * 200 + "a" * 400)], limit=500)  # cut one at a time: hung
def test_messages_cut_to_a_limit_stay_whole_json_newest_kept(
    messages: list[tuple[str, str]], limit: int
) -> None:
    """Under a length limit the history is cut to whole JSON: long texts end in "…", and where
    even that has no room the oldest messages go first."""
    body = {"messages": [{"role": r, "content": c} for r, c in messages]}
    a = _exported("chat", body, limit)
    if sc.GEN_AI_INPUT_MESSAGES not in a:
        least = [_said(messages[-1][0], "…")]
        assert len(json.dumps(least, ensure_ascii=False)) > limit  # not even the newest's "…"
        return
    got = json.loads(a[sc.GEN_AI_INPUT_MESSAGES])
    assert len(a[sc.GEN_AI_INPUT_MESSAGES]) <= limit and got
    kept = messages[len(messages) - len(got) :]
    for message, (role, text) in zip(got, kept, strict=True):
        (part,) = message["parts"]
        clean = storable_text(text, len(text) + 1)
        content = part["response" if role == "tool" else "content"]
        assert message["role"] == role
        assert content == clean or (content.endswith("…") and clean.startswith(content[:-1]))


def test_the_python_api_exports_a_chats_roles_to_a_collector(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the meter and a real OTLP receiver (before: one user message of every text)."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        history = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you"},
        ]
        client.chat(model="llama3.1:8b", messages=history)
        client.generate(model="llama3.1:8b", prompt="write a poem", system="be a pirate")
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 2 else None, what="two spans")
        telemetry.shutdown()
    chat, generate = sorted(views, key=lambda v: v.start_ns)
    assert json.loads(chat.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        _said(m["role"], m["content"]) for m in history
    ]
    assert json.loads(generate.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        _said("user", "write a poem")
    ]
    assert json.loads(generate.attributes[SYSTEM_INSTRUCTIONS]) == [
        {"type": "text", "content": "be a pirate"}
    ]
    (row,) = [s for s in client.meter.ledger.latest(SpanFilter(), 10) if s.operation == "chat"]
    assert row.prompt == "You are terse.\nhi\nhello\nhow are you"  # the ledger's text as before


@settings(max_examples=60, deadline=None)
@given(
    status=st.sampled_from(list(Status)),
    error_type=st.sampled_from([None, "client_abort", "timeout", "budget_exceeded", "interrupted"]),
    recorded_elsewhere=st.booleans(),
)
def test_a_span_with_an_error_type_has_the_error_status(
    status: Status, error_type: str | None, recorded_elsewhere: bool
) -> None:
    """The conventions (recording errors): a failed operation's span has status Error and an
    ``error.type``; one that ended without error leaves its status unset. A call its caller
    stopped (``client_abort``, which the README lists among the failures) was exported with
    ``error.type=client_abort`` and its status unset, a span no backend counts as failed."""
    span = make_span(status=status, error_type=error_type)
    otel = observed(span, elsewhere=recorded_elsewhere)
    failed = sc.ERROR_TYPE in (otel.attributes or {})
    assert failed == (error_type is not None)
    assert (otel.status.status_code == StatusCode.ERROR) == failed
