"""A 500 Ollama answers for the request's own fault opens no circuit other callers then hit.

Ollama answers some mistakes in a request with a 500, not a 400: a ``format`` that is not
``"json"`` or a schema it can make a grammar of (``invalid JSON schema in format``, common
with schemas that use ``$ref``), a generate's own ``template`` that does not parse
(``template: :1: unclosed action``), an image the runner cannot make a sequence of (``Failed
to create new sequence: failed to process inputs: received zero length image``). Read as the server failing, each such call was sent
three times, and three such calls from one caller opened the model's circuit: every other
caller of that model, in any department, got 503 for a minute from a healthy server. The
same request fails the same way every time: it is the caller's mistake, sent once,
counted by no circuit (as an option of the wrong type already was).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
SALES = {"X-Ometer-Department": "sales"}
SUPPORT = {"X-Ometer-Department": "support"}


@pytest.mark.parametrize(
    ("path", "bad", "said"),
    [
        ("/api/chat", {"messages": HI, "format": {"type": "thing"}}, "invalid JSON schema"),
        ("/api/chat", {"messages": HI, "format": "xml"}, "invalid format"),
        ("/api/generate", {"prompt": "hello", "format": {"type": "thing"}}, "invalid JSON"),
        ("/api/generate", {"prompt": "hello", "template": "{{ .Prompt "}, "unclosed action"),
        ("/api/generate", {"prompt": "hello", "images": [""]}, "zero length image"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "hi", "images": [""]}]},
            "zero length image",
        ),
    ],
    ids=[
        "chat-schema",
        "chat-format",
        "generate-schema",
        "generate-template",
        "generate-image",
        "chat-image",
    ],
)
def test_a_requests_own_500_is_sent_once_and_opens_no_circuit_for_others(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    path: str,
    bad: dict[str, Any],
    said: str,
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    body = {"model": "llama3.1:8b", "stream": False, **bad}
    for _ in range(4):  # past the model circuit's threshold of 3
        reply = gw.client.post(path, json=body, headers=SALES)
        assert reply.status_code == 500, reply.text[:300]
        assert said in reply.json()["error"]
    assert len(emulator.requests_to(path)) == 4  # each sent once, never retried
    good = {"model": "llama3.1:8b", "stream": False, "messages": HI}
    reply = gw.client.post("/api/chat", json=good, headers=SUPPORT)
    assert reply.status_code == 200, reply.text[:300]
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.department, s.status, s.error_type, s.http_status) for s in spans] == [
        ("support", "ok", None, 200)
    ] + [("sales", "error", "bad_request", 500)] * 4


PNG_OF_NO_BYTES = {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}
SCHEMA_OF_NO_TYPE = {"type": "json_schema", "json_schema": {"schema": {"type": "thing"}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ({"response_format": SCHEMA_OF_NO_TYPE}, "invalid JSON schema in format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": "xml"}}}, "invalid format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, PNG_OF_NO_BYTES]}]},
            "zero length image",
        ),
    ],
    ids=["schema", "format", "image"],
)  # fmt: skip
def test_on_v1_a_requests_own_500_is_sent_once_openai_shaped_and_opens_no_circuit(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    bad: dict[str, Any],
    said: str,
    stream: bool,
) -> None:
    """The same through Ollama's OpenAI layer, which says it in OpenAI's error object (a
    ``response_format``'s schema is Ollama's ``format``, an ``image_url`` data URI an image):
    what it is about is read from the object's ``message``, streamed or not."""
    gw = app_on(emulator.url, sqlite_url)
    body = {"model": "llama3.1:8b", "stream": stream, "messages": HI, **bad}
    for _ in range(4):  # past the model circuit's threshold of 3
        reply = gw.client.post("/v1/chat/completions", json=body, headers=SALES)
        assert reply.status_code == 500, reply.text[:300]
        error = reply.json()["error"]
        assert said in error["message"] and error["type"] == "api_error", error
        assert reply.headers["x-ometer-span-id"]
    assert len(emulator.requests_to("/v1/chat/completions")) == 4  # each sent once
    good = {"model": "llama3.1:8b", "stream": stream, "messages": HI}
    reply = gw.client.post("/v1/chat/completions", json=good, headers=SUPPORT)
    assert reply.status_code == 200, reply.text[:300]
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.department, s.status, s.error_type, s.http_status) for s in spans] == [
        ("support", "ok", None, 200)
    ] + [("sales", "error", "bad_request", 500)] * 4
    assert [s.input_tokens for s in spans[1:]] == [0] * 4  # refused before the model read it


@pytest.mark.parametrize("bad_format", [{"type": "thing"}, "xml"], ids=["schema", "format"])
def test_a_format_refused_after_a_thinking_models_thinking_opens_no_circuit_either(
    app_on: Callable[..., Gateway], sqlite_url: str, bad_format: Any
) -> None:
    """A thinking model's streamed chat is run first without its ``format``: Ollama asks for
    the grammar only once the thinking is done, so a format it cannot read is refused inside
    the 200, after the thinking, in the same words as the 500 it is otherwise. Read as the
    stream breaking, three such calls opened the model's circuit for every other caller."""
    emulator = OllamaEmulator(models=[*DEFAULT_MODELS, THINKING_MODEL]).start()
    try:
        _four_refused_then_one_served(app_on(emulator.url, sqlite_url), emulator, bad_format)
    finally:
        emulator.stop()


def _four_refused_then_one_served(gw: Gateway, emulator: OllamaEmulator, bad_format: Any) -> None:
    body = {"model": THINKING_MODEL.name, "messages": HI, "format": bad_format}
    for _ in range(4):  # past the model circuit's threshold of 3
        reply = gw.client.post("/api/chat", json=body, headers=SALES)
        assert reply.status_code == 200, reply.text[:300]
        *thinking, last = [json.loads(line) for line in reply.text.splitlines()]
        assert thinking and all(line["message"]["thinking"] for line in thinking)
        assert "format" in last["error"] and "invalid" in last["error"], last
    assert len(emulator.requests_to("/api/chat")) == 4  # each sent once
    good = {"model": THINKING_MODEL.name, "messages": HI, "format": {"type": "object"}}
    reply = gw.client.post("/api/chat", json=good, headers=SUPPORT)
    assert reply.status_code == 200, reply.text[:300]
    assert json.loads(reply.text.splitlines()[-1])["done"] is True
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.department, s.status, s.error_type, s.http_status) for s in spans] == [
        ("support", "ok", None, 200)
    ] + [("sales", "error", "bad_request", None)] * 4  # no status of its own: the 200 was sent
    # The thinking was generated: each refused call is charged the pieces it streamed.
    assert {s.output_tokens for s in spans[1:]} == {len(thinking)}
