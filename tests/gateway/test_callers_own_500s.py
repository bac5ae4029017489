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

from collections.abc import Callable
from typing import Any

import pytest

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
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
