"""Ollama's ``_debug_render_only``: the prompt a model's template renders, and no model run.

Ollama's chat and generate (and its OpenAI chat and completions, which become them) answer a
body with ``"_debug_render_only": true`` with a 200 holding the rendered prompt and no
``done``: nothing is evaluated. The gateway took that for a failing model: a 502 for the
caller, the prompt charged as estimated tokens for work never done, and a failure towards
the model's circuit, so two callers (two department headers, without keys) opened the
model's circuit for every caller with four such requests. It is refused as a request the
gateway does not meter (400, a span, nothing sent), in any spelling Go reads.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from tests.gateway.test_what_ollama_reads import other_spellings

DEBUG = "_debug_render_only"
ROUTES = {
    "/api/chat": {"messages": [{"role": "user", "content": "hi " * 1000}]},
    "/api/generate": {"prompt": "hi " * 1000},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi " * 1000}]},
    "/v1/completions": {"prompt": "hi " * 1000},
}
RENDERED = {  # what Ollama answers such a body: no "done", no counts
    "model": "llama3.1:8b",
    "created_at": "2026-12-05T00:00:00Z",
    "message": {"role": "", "content": ""},
    "done": False,
    "debug_info": {"rendered_template": "<|user|>hi", "image_count": 0},
}
ANSWER = {
    "model": "llama3.1:8b",
    "created_at": "2026-12-05T00:00:00Z",
    "message": {"role": "assistant", "content": "hello"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 3,
    "eval_count": 1,
}


def http(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % len(data) + data


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(sorted(ROUTES)),
    key=st.sampled_from([DEBUG, *other_spellings(DEBUG)]),
    stream=st.booleans(),
)
def test_a_body_asking_for_the_rendered_prompt_is_refused_and_charges_and_fails_no_one(
    upstream: tuple[Any, Any], path: str, key: str, stream: bool
) -> None:
    gw, server = upstream
    server.body = http(RENDERED)
    body = {"model": "llama3.1:8b", "stream": stream, **ROUTES[path], key: True}
    sent = server.calls
    for department in ("a", "a", "b", "b"):  # two callers, enough failures to open a circuit
        reply = gw.client.post(path, json=body, headers={"X-Ometer-Department": department})
        assert reply.status_code == 400, reply.text[:300]
        said = reply.json()["error"]
        said = said if isinstance(said, str) else said["message"]  # OpenAI's error object
        assert said.startswith(f"body: {json.dumps(key)} asks Ollama for the prompt"), said
        assert said.endswith("or leave the field out)"), said
        span = gw.ledger.latest(SpanFilter(), 1)[0]
        assert reply.headers["X-Ometer-Span-Id"] == span.id
        assert (span.status, span.error_type, span.cost_total) == ("error", "bad_request", 0)
    assert server.calls == sent  # nothing went to Ollama
    server.body = http(ANSWER)  # the model still answers everyone else
    asked = {
        "model": "llama3.1:8b",
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
    }
    reply = gw.client.post("/api/chat", json=asked, headers={"X-Ometer-Department": "c"})
    assert reply.status_code == 200, reply.text[:300]


def test_a_body_that_sets_it_false_is_an_ordinary_call(upstream: tuple[Any, Any]) -> None:
    gw, server = upstream
    server.body = http(ANSWER)
    body = {"model": "llama3.1:8b", "stream": False, "prompt": "hi", DEBUG: False}
    generated = dict(ANSWER, response="hello")
    server.body = http(generated)
    reply = gw.client.post("/api/generate", json=body)
    assert reply.status_code == 200, reply.text[:300]
    span = gw.ledger.latest(SpanFilter(), 1)[0]
    assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 3, 1)
