"""``gen_ai.response.id``: the id the upstream gave its answer, on the call's span.

The GenAI conventions recommend it on an inference span (``chatcmpl-123``); ometer never
exported it, so a span could not be matched with the answer a client logged. Ollama's
OpenAI-compatible answers carry one (``chatcmpl-…``, ``cmpl-…``), its Anthropic ones
(``msg_…``) and Responses ones (``resp_…``) too, on every chunk of a stream; its native
``/api/chat`` has none, and nothing is set there. An id is the upstream's text: a hostile one
(huge, with control characters, not a text) is exported bounded and printable, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter import load_settings
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.upstream import Final
from ollama_meter.upstream._anthropic import MessagesReader
from ollama_meter.upstream._responses import ResponsesReader
from ollama_meter.upstream._wire import OpenAIReader
from tests._otlp import OtlpHttpReceiver, SpanView, spans, wait_for
from tests.gateway.conftest import Gateway
from tests.telemetry.test_content_shape import _exported
from tests.telemetry.test_tool_parts_routes import gateway  # noqa: F401 (a fixture)

MODEL = "llama3.1:8b"
ROUTES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "hi"},
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
    "/v1/responses": {"input": "hi"},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}]},
}


def _ids(text: str) -> set[str]:
    """Every id an answer gave itself: a whole one's, each chunk's of an OpenAI stream, the
    ``message``'s or ``response``'s an event carries (not its items', blocks' or calls')."""
    found: set[str] = set()
    for line in text.splitlines():
        said = line.removeprefix("data: ").strip()
        if said.startswith("{"):
            obj = json.loads(said)
            for whole in (obj, obj.get("message"), obj.get("response")):
                if isinstance(whole, dict) and isinstance(whole.get("id"), str):
                    found.add(whole["id"])
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_each_route_exports_the_id_its_answer_gave(
    gateway: Callable[[str], Gateway],  # noqa: F811
    stream: bool,
) -> None:
    answers: dict[str, set[str]] = {}
    with OtlpHttpReceiver() as rx:
        gw = gateway(rx.url)
        for path, body in ROUTES.items():
            answer = gw.client.post(path, json={"model": MODEL, "stream": stream, **body})
            assert answer.status_code == 200, answer.text
            answers[path] = _ids(answer.text)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views: list[SpanView] = wait_for(
            lambda: s if len(s := spans(rx)) == len(ROUTES) else None, what="a span a route"
        )
        telemetry.shutdown()
    exported = [v.attributes.get(sc.GEN_AI_RESPONSE_ID) for v in sorted(views, key=_start)]
    for (path, ids), said in zip(answers.items(), exported, strict=True):
        if path == "/api/chat":
            assert ids == set() and said is None
            continue
        (one,) = ids  # every chunk gives the same one
        assert said == one, path
    assert [i.split("-")[0].split("_")[0] for i in exported[:4]] == [
        "chatcmpl", "cmpl", "msg", "resp"
    ]  # fmt: skip


def _start(view: SpanView) -> int:
    return view.start_ns


HOSTILE: list[Any] = [
    "x" * 1_000_000,
    "chatcmpl-\x1b[31m\n\x00\ud800",
    12345,
    None,
    ["chatcmpl-1"],
    {"id": "chatcmpl-1"},
    "",
]


def _read(kind: str, ident: Any) -> Final:
    """The final record each reader makes of an answer with ``ident`` as its id."""
    if kind == "openai":
        reader: Any = OpenAIReader("openai.chat")
        answer = {"id": ident, "model": MODEL, "choices": [{"message": {"content": "ok"}}]}
        events = [*reader.read(answer), *reader.finish()]
    elif kind == "anthropic":
        reader = MessagesReader()
        answer = {"id": ident, "type": "message", "model": MODEL, "content": []}
        events = [*reader.read(answer), *reader.finish()]
    else:
        reader = ResponsesReader()
        answer = {"id": ident, "object": "response", "model": MODEL, "status": "completed"}
        events = [*reader.read(answer), *reader.finish()]
    (final,) = [e for e in events if isinstance(e, Final)]
    return final


@pytest.mark.parametrize("kind", ["openai", "anthropic", "responses"])
@pytest.mark.parametrize("ident", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_id_is_exported_bounded_and_printable_or_not_at_all(
    kind: str, ident: Any
) -> None:
    final = _read(kind, ident)
    said = _exported(None, response_id=final.response_id).get(sc.GEN_AI_RESPONSE_ID)
    if not isinstance(ident, str) or not ident:
        assert not final.response_id and said is None
        return
    assert isinstance(said, str) and said.isprintable()
    assert len(said) <= sc.MAX_RESPONSE_ID
    said.encode()  # no lone surrogate: OTLP could not carry it
    if len(ident) > sc.MAX_RESPONSE_ID:
        assert said == ident[: sc.MAX_RESPONSE_ID - 1] + "…"
    else:
        assert said == "chatcmpl-\ufffd[31m\ufffd\ufffd\ufffd"


@settings(max_examples=100, deadline=None)
@given(ident=st.text(max_size=400))
def test_any_text_id_is_exported_as_it_is_or_bounded(ident: str) -> None:
    said = _exported(None, response_id=ident).get(sc.GEN_AI_RESPONSE_ID)
    if not ident:
        assert said is None
        return
    assert isinstance(said, str) and said.isprintable() and len(said) <= sc.MAX_RESPONSE_ID
    if ident.isprintable() and len(ident) <= sc.MAX_RESPONSE_ID:
        assert said == ident


def test_the_id_is_not_stored_in_the_ledger() -> None:
    from ollama_meter.records import ROW_FIELDS

    assert "response_id" not in ROW_FIELDS


@pytest.mark.parametrize("ident", [12345, ["chatcmpl-1"], b"chatcmpl-1", {"id": "x"}])
def test_an_id_a_hook_set_to_no_text_is_not_exported(ident: Any) -> None:
    """A hook may set anything on the span: what is no text is no id."""
    assert sc.GEN_AI_RESPONSE_ID not in _exported(None, response_id=ident)
