"""Exported tool calls are JSON any reader takes, whatever a Python caller or a lenient
client read put in their arguments.

The gateway reads Ollama's answers strictly (no ``NaN`` or ``Infinity``), but the in-process
client reads them with the ``ollama`` library (Python's decoder takes both, and reads
``1e400`` as infinity), and a caller's history is its own Python objects. Python's encoder
wrote them as ``NaN`` and ``Infinity``: ``gen_ai.output.messages`` no JSON reader parses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.records import storable_text
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT
from tests._observed import observed
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests._raw_http import RawServer
from tests.factories import make_span


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strictly(text: str) -> Any:
    """``text`` read as JavaScript's and Go's readers read JSON: no NaN, no Infinity."""
    return json.loads(text, parse_constant=_not_json)


REPLY = (
    b'{"model":"llama3.1:8b","created_at":"2026-12-07T00:00:00Z","message":{"role":'
    b'"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":'
    b'{"x":NaN,"y":-Infinity,"z":1e400}}}]},"done":true,"done_reason":"stop",'
    b'"prompt_eval_count":3,"eval_count":4}'
)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def test_nan_in_the_in_process_clients_tool_calls_is_exported_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream's reply with NaN, -Infinity and 1e400 in a call's arguments, read by the
    in-process client; a history whose earlier call's arguments hold NaN (the call is refused
    before it is sent, and its span still says what was asked)."""
    server = RawServer(lambda: HEAD % len(REPLY) + REPLY)
    try:
        with OtlpHttpReceiver() as rx:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
            monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
            client = MeteredClient(server.url, db_url=f"sqlite:///{tmp_path / 'l.db'}")
            reply = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
            arguments = dict(reply["message"]["tool_calls"][0]["function"]["arguments"])
            assert math.isnan(arguments["x"]) and arguments["z"] == math.inf  # as read
            history = [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "f", "arguments": {"x": math.nan}}}]},
                {"role": "tool", "content": "r"},
            ]  # fmt: skip
            with pytest.raises(Exception, match="not JSON compliant"):
                client.chat(model="llama3.1:8b", messages=history)
            telemetry = telemetry_for(load_settings())
            assert telemetry is not None and telemetry.flush()
            views = wait_for(lambda: s if len(s := spans(rx)) == 2 else None, what="two spans")
            telemetry.shutdown()
    finally:
        server.close()
    replied, refused = sorted(views, key=lambda v: v.start_ns)
    (message,) = strictly(replied.attributes[sc.GEN_AI_OUTPUT_MESSAGES])
    assert message["parts"] == [
        {"type": "tool_call", "name": "f",
         "arguments": {"x": "NaN", "y": "-Infinity", "z": "Infinity"}}
    ]  # fmt: skip
    said = strictly(refused.attributes[sc.GEN_AI_INPUT_MESSAGES])
    assert said[1] == {
        "role": "assistant",
        "parts": [{"type": "tool_call", "name": "f", "arguments": {"x": "NaN"}}],
    }


class _Odd:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def _long() -> int:
    return 10**5000  # longer than Python writes


_CYCLE: list[Any] = [1]
_CYCLE.append(_CYCLE)
HOSTILE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities among them
    | st.builds(_long)
    | st.text(max_size=20)
    | st.just(_Odd())
    | st.just(_CYCLE),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(max_size=6) | st.integers() | st.floats() | st.tuples(st.integers()),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)
CALLS = st.lists(
    st.tuples(st.none() | st.text(max_size=20), st.text(max_size=20), HOSTILE), max_size=4
)


@settings(max_examples=300, deadline=None)
@given(
    called=CALLS,
    earlier=CALLS,
    limit=st.integers(0, 800) | st.just(MAX_EXPORTED_TEXT),
)
@example(called=[(None, "f", {"k": math.nan, (1, 2): [math.inf] * 3_000})], earlier=[], limit=900)
def test_any_arguments_are_exported_as_json_within_the_bound(
    called: list[tuple[str | None, str, Any]],
    earlier: list[tuple[str | None, str, Any]],
    limit: int,
) -> None:
    """Whatever a reply's calls and a history's earlier calls hold (NaN, infinities, keys
    that are not text, a list inside itself, nesting deeper than Python recurses, an integer
    too long to write, an object whose text fails): each message attribute is JSON a strict
    reader takes, within the limit, its calls in order with their names; or, with no room,
    not sent."""
    prompt = "hi\nr"
    span = make_span(
        prompt=prompt,
        said=(("user", (2,)), ("assistant", ()), ("tool", (1,))),
        told=((None, ()), (None, tuple(earlier)), ("c", ())),
        reply="",
        called=tuple(called),
        done_reason="stop",
    )
    if not earlier:  # a message of no text and no calls is not said
        span.said, span.told = (("user", (2,)), ("tool", (1,))), ((None, ()), ("c", ()))
    got = observed(span, capture_content=True, max_length=limit).attributes or {}
    for key, calls in ((sc.GEN_AI_OUTPUT_MESSAGES, called), (sc.GEN_AI_INPUT_MESSAGES, earlier)):
        if key not in got:
            continue
        text = str(got[key])
        assert len(text) <= min(limit, MAX_EXPORTED_TEXT)
        parts = [p for m in strictly(text) for p in m["parts"] if p["type"] == "tool_call"]
        shown = calls[len(calls) - len(parts) :] if parts else []
        assert [p["name"] for p in parts] == [storable_text(n, len(n) + 1) for _, n, _ in shown]


def test_arguments_nested_deeper_than_python_recurses_are_exported_as_json() -> None:
    """Python's encoder raised RecursionError at 5,000 levels (the export failed); kept to
    :data:`~ollama_meter.records._json.DEEPEST` levels, the rest "…"."""
    span = make_span(reply="", called=(("c", "f", _deep(5_000)),), done_reason="stop")
    got = observed(span, capture_content=True).attributes or {}
    (message,) = strictly(str(got[sc.GEN_AI_OUTPUT_MESSAGES]))
    (part,) = message["parts"]
    assert json.dumps(part["arguments"], ensure_ascii=False) == "[" * 64 + '"…"' + "]" * 64
