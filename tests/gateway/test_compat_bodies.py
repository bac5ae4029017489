"""Hostile bodies on the OpenAI- and Anthropic-compatible routes: each answer in its route's shape.

Hypothesis takes a valid body of each route and puts a generated JSON value (a wrong
type, a deep or long list, a content part of an unknown type, an image URL) at a
generated place in it. Whatever the gateway or Ollama answers: no 5xx, exactly one span,
and an error the route's clients can read: OpenAI's ``{"error": {"message", ...}}`` on
``/v1``, Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on
``/v1/messages``. What reaches Ollama reaches it once, as the client sent it.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

USER = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "llama3.1:8b",
        "messages": [*USER, {"role": "user", "content": [{"type": "text", "text": "x"}]}],
        "max_tokens": 5,
        "stream": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    "/v1/completions": {"model": "llama3.1:8b", "prompt": "hi", "max_tokens": 5},
    "/v1/embeddings": {"model": "nomic-embed-text", "input": ["hi", "there"]},
    "/v1/responses": {
        "model": "llama3.1:8b",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "max_output_tokens": 5,
    },
    "/v1/messages": {
        "model": "llama3.1:8b",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    },
}  # fmt: skip
DEEP: list[Any] = []
for _ in range(40):
    DEEP = [DEEP]
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(
        [
            {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}},
            {"type": "input_image", "image_url": "http://127.0.0.1:1/x.png"},
            {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:1/x.png"}},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "!!"},
            },
            {"type": "mystery", "text": "x"},
            DEEP,
            list(range(500)),
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def places(body: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``body`` a value can be put: each key and item, at any depth."""
    found = [at]
    if isinstance(body, dict):
        for key, value in body.items():
            found += places(value, (*at, key))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            found += places(value, (*at, i))
    return found


def put(body: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    new = copy.deepcopy(body)
    holder = new
    for step in at[:-1]:
        holder = holder[step]
    holder[at[-1]] = value
    return new


def readable(path: str, error: Any) -> bool:
    """The error object the route's official clients read."""
    if path == "/v1/messages":
        inner = error.get("error") if isinstance(error, dict) else None
        return (
            error.get("type") == "error"
            and isinstance(inner, dict)
            and isinstance(inner.get("type"), str)
            and isinstance(inner.get("message"), str)
        )
    inner = error.get("error") if isinstance(error, dict) else None
    return isinstance(inner, dict) and isinstance(inner.get("message"), str)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), path=st.sampled_from(sorted(VALID)))
def test_a_hostile_body_is_answered_in_its_routes_shape_and_one_span(
    sqlite_app: Gateway, emulator: OllamaEmulator, data: st.DataObject, path: str
) -> None:
    valid = VALID[path]
    at = data.draw(st.sampled_from(places(valid)[1:]), label="at")
    body = put(valid, at, data.draw(values, label="value"))
    before, sent = sqlite_app.ledger.count(), len(emulator.requests_to(path))
    reply = sqlite_app.client.post(path, json=body)
    assert reply.status_code < 500, (reply.status_code, reply.text)
    assert sqlite_app.ledger.count() == before + 1
    (span,) = sqlite_app.ledger.latest(SpanFilter(), 1)
    assert reply.headers["x-ometer-span-id"] == str(span.id)
    if reply.status_code >= 400:
        assert readable(path, reply.json()), reply.text
        assert span.status != "ok"
    forwarded = emulator.requests_to(path)[sent:]
    # At most once, and as the client sent it; but a /v1 stream is asked for its usage on the
    # client's behalf (the meter needs the counts; a draw of stream true at the top found it).
    asked = {**body, "stream_options": {"include_usage": True}}
    usage = body.get("stream") is True and "stream_options" not in body
    assert [r.body for r in forwarded] in ([], [body], *([[asked]] if usage else []))
