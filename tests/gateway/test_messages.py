"""Ollama's Anthropic Messages API (``POST /v1/messages``) through the gateway, with the
official ``anthropic`` client: one span per call, exact tokens and money, every way it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import estimate_tokens
from ollama_meter.testing import Fault, OllamaEmulator, expected_reply
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, left_mid_stream

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales", "X-Ometer-User": "carol"}
SYSTEM = "answer in one line"
ASKED = "hello from the crm bot"
EXPECTED = expected_reply(
    "llama3.1:8b",
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASKED}],
)
USER: Any = [{"role": "user", "content": ASKED}]


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


def client_of(gw: Gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key="unused", max_retries=0, default_headers=headers
    )


def test_the_official_client_gets_its_answer_and_each_call_one_exact_span(gateway: Gateway) -> None:
    gateway.ledger.add_price_rule(token_prices())
    client = client_of(gateway, **SALES)
    whole = client.messages.create(
        model="llama3.1:8b", max_tokens=1000, system=SYSTEM, messages=USER
    )
    assert [block.type for block in whole.content] == ["text"]
    assert whole.content[0].text == EXPECTED.content  # type: ignore[union-attr]
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (
        EXPECTED.prompt_tokens,
        EXPECTED.output_tokens,
    )
    with client.messages.stream(
        model="llama3.1:8b", max_tokens=1000, system=SYSTEM, messages=USER
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()  # relayed to its message_stop, usage and all
    assert text == EXPECTED.content
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        EXPECTED.prompt_tokens,
        EXPECTED.output_tokens,
    )
    streamed, plain = spans(gateway)
    for span, stream_ in ((plain, False), (streamed, True)):
        assert (span.operation, span.stream, span.status) == ("anthropic.messages", stream_, "ok")
        assert (span.tenant, span.department, span.user) == ("acme", "sales", "carol")
        assert (span.request_model, span.response_model) == ("llama3.1:8b", "llama3.1:8b")
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            EXPECTED.prompt_tokens,
            EXPECTED.output_tokens,
            "reported",
        )
        assert span.cost_total == EXPECTED.prompt_tokens * 1000 + EXPECTED.output_tokens * 2000
    assert streamed.ttft_ns is not None and streamed.ttft_ns <= streamed.latency_ns


def test_blocks_and_tool_results_are_metered_as_the_chat_ollama_makes_of_them(
    sqlite_gateway: Gateway,
) -> None:
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": " two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "four"}]},
    ]  # fmt: skip
    system: Any = [{"type": "text", "text": "be terse"}]
    expected = expected_reply(
        "qwen2.5:7b", [{"content": text} for text in ("be terse", "one two", "three", "four")]
    )
    answer = client_of(sqlite_gateway).messages.create(
        model="qwen2.5:7b", max_tokens=1000, system=system, messages=messages
    )
    assert answer.content[0].text == expected.content  # type: ignore[union-attr]
    (span,) = spans(sqlite_gateway)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (
        expected.prompt_tokens,
        expected.output_tokens,
        "reported",
    )


@pytest.mark.parametrize("stream", [False, True])
def test_counts_ollama_did_not_take_are_estimated_not_its_length_guess(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, stream: bool
) -> None:
    """Ollama writes a count it did not take as 0; a stream's message_start carries its
    guess from the request's length, which message_delta's 0 replaces: estimated, never free."""
    sqlite_gateway.ledger.add_price_rule(token_prices())
    emulator.inject(Fault.OMIT_COUNTS)
    client = client_of(sqlite_gateway)
    if stream:
        with client.messages.stream(model="llama3.1:8b", max_tokens=1000, messages=USER) as s:
            s.until_done()
    else:
        client.messages.create(model="llama3.1:8b", max_tokens=1000, messages=USER)
    reply = expected_reply("llama3.1:8b", [{"role": "user", "content": ASKED}])
    output = reply.output_tokens if stream else estimate_tokens(reply.content)
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.input_tokens, span.output_tokens, span.token_source) == (
        "ok",
        estimate_tokens(ASKED),
        output,
        "estimated",
    )
    assert span.cost_total == estimate_tokens(ASKED) * 1000 + output * 2000


def test_ollamas_errors_reach_the_client_in_anthropics_shape_and_are_spans(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    client = client_of(sqlite_gateway)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=9, messages=USER)
    assert missing.value.body == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "model 'no-such-model' not found",
        },
    }
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=3)
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(model="llama3.1:8b", max_tokens=1000, messages=USER) as s,
    ):
        s.until_done()
    broken, absent = spans(sqlite_gateway)
    assert (absent.status, absent.error_type, absent.http_status) == (
        "error",
        "model_not_found",
        404,
    )
    assert (broken.status, broken.error_type) == ("error", "stream_error")
    assert (broken.output_tokens, broken.token_source) == (3, "estimated")


def test_a_body_ollama_would_refuse_is_a_400_in_anthropics_shape_and_a_span(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    for body, said in (
        ({"model": "llama3.1:8b", "max_tokens": 9, "messages": "hi"}, "messages: input should be a valid list, got a string"),
        (
            {"model": "llama3.1:8b", "max_tokens": 8.5, "messages": USER},
            "max_tokens: input should be a valid integer, got a number",
        ),
        (
            {"model": "llama3.1:8b", "max_tokens": 9, "messages": USER, "System": "x"},
            'body: "System" is "system" spelled another way, which Ollama would '
            'read as "system"; spell it "system"',
        ),
    ):  # fmt: skip
        reply = sqlite_app.client.post("/v1/messages", json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": said},
        }
    assert emulator.requests_to("/v1/messages") == []
    assert [s.error_type for s in spans(sqlite_app)] == ["bad_request"] * 3


def test_under_a_hard_budget_ollama_gets_the_reply_cap_in_max_tokens(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    whole = expected_reply("llama3.1:8b", [{"role": "user", "content": ASKED}]).output_tokens
    # No cap (which Ollama would refuse): the gateway's (OMETER_BUDGET_REPLY_CAP, 4096).
    for cap, sent_cap, output in ((None, 4096, whole), (5, 5, 5)):
        body = {"model": "llama3.1:8b", "messages": USER}
        body |= {"max_tokens": cap} if cap else {}
        reply = gw.client.post("/v1/messages", json=body, headers=SALES)
        assert reply.status_code == 200, reply.text
        assert emulator.requests_to("/v1/messages")[-1].body["max_tokens"] == sent_cap
        assert spans(gw)[0].output_tokens == output


def test_a_reply_cap_past_a_hard_budget_is_refused_before_ollama_as_a_billing_error(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1, currency="USD")
    )
    body = {"model": "llama3.1:8b", "max_tokens": 1_000, "system": "x " * 2_000, "messages": USER}
    reply = gw.client.post("/v1/messages", json=body, headers=SALES)
    assert reply.status_code == 429, reply.text
    error = reply.json()
    assert (error["type"], error["error"]["type"]) == ("error", "billing_error")
    assert emulator.requests_to("/v1/messages") == []
    assert spans(gw)[0].status == "rejected"


def test_a_stream_that_stops_before_message_stop_ends_in_anthropics_error_event(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """Ollama's events just stop when its chat fails: the client is told, and it is a span."""
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=2)
    body = {"model": "llama3.1:8b", "max_tokens": 1000, "messages": USER, "stream": True}
    reply = sqlite_app.client.post("/v1/messages", json=body)
    events = [line for line in reply.text.split("\n") if line.startswith("event:")]
    assert events[-1] == "event: error"  # the client is told, in Anthropic's words
    (span,) = spans(sqlite_app)
    assert (span.status, span.error_type, span.output_tokens) == ("error", "stream_error", 2)


def test_captured_content_is_the_input_and_the_reply_text(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"capture_content": True})
    client = client_of(gw)
    client.messages.create(model="llama3.1:8b", max_tokens=1000, system=SYSTEM, messages=USER)
    (span,) = spans(gw)
    assert (span.prompt, span.reply) == (f"{SYSTEM}\n{ASKED}", EXPECTED.content)


def test_an_ollama_too_old_for_the_route_is_its_own_404_and_a_span(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """Before 0.14 Ollama has no ``/v1/messages``: the client gets its 404 as it came."""
    emulator.inject(Fault.NO_ROUTE)
    body = {"model": "llama3.1:8b", "max_tokens": 9, "messages": USER}
    reply = sqlite_app.client.post("/v1/messages", json=body)
    assert (reply.status_code, reply.text) == (404, "404 page not found")
    (span,) = spans(sqlite_app)
    assert (span.status, span.http_status) == ("error", 404)


def test_under_require_key_a_bearer_key_is_read_and_a_refusal_is_anthropics(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Anthropic clients send a key as ``Authorization: Bearer`` when given an auth token
    (Claude Code's ``ANTHROPIC_AUTH_TOKEN``): the gateway reads that, and its refusal is
    Anthropic's ``authentication_error``."""
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    _, secret = gw.ledger.create_key(name="claude", tenant="acme", department="sales")
    body = {"model": "llama3.1:8b", "max_tokens": 1000, "messages": USER}
    refused = gw.client.post("/v1/messages", json=body)
    assert refused.status_code == 401
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"
    reply = gw.client.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert reply.status_code == 200, reply.text
    ok = [s for s in spans(gw) if s.status == "ok"]
    assert [(s.tenant, s.department) for s in ok] == [("acme", "sales")]


def test_under_require_key_the_key_anthropics_client_sends_as_x_api_key_is_read(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Anthropic's clients send ``api_key`` (``ANTHROPIC_API_KEY``) as ``X-Api-Key``, which
    the gateway did not read: such a client was refused under ``--require-key`` whatever key
    it held. Two ``X-Api-Key`` headers are no key, as two ``X-Ometer-Key`` are."""
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    _, secret = gw.ledger.create_key(name="claude", tenant="acme", department="sales")
    body = {"model": "llama3.1:8b", "max_tokens": 1000, "messages": USER}
    reply = gw.client.post("/v1/messages", json=body, headers={"X-Api-Key": secret})
    assert reply.status_code == 200, reply.text
    two = [("X-Api-Key", secret), ("X-Api-Key", "sk-other")]
    refused = gw.client.post("/v1/messages", json=body, headers=two)
    assert refused.status_code == 401
    assert refused.json()["error"] == {  # in Anthropic's shape, naming the header it reads
        "type": "authentication_error",
        "message": "X-Api-Key is given twice, so no key is read from it (a proxy on the way may "
        "have read the other one): give the key once",
    }
    ok = [s for s in spans(gw) if s.status == "ok"]
    assert [(s.tenant, s.department) for s in ok] == [("acme", "sales")]


WEB_SEARCH: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]


def test_a_web_search_call_no_bound_holds_is_refused_by_a_hard_budget_only(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """With Anthropic's built-in web search among the tools, Ollama answers a call the model
    searches in with up to four chats (``maxWebSearchLoops``), the later ones over search
    results of a size nobody knows before the call, and reports their counts summed: no
    bound holds it, so a hard budget refuses it (it was admitted on one chat's bound),
    and says why. A soft budget, or none, meters it as it comes."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    body = {"model": "llama3.1:8b", "max_tokens": 9, "messages": USER, "tools": WEB_SEARCH}
    support = {**SALES, "X-Ometer-Department": "support"}  # under no budget
    assert gw.client.post("/v1/messages", json=body, headers=support).status_code == 200
    refused = gw.client.post("/v1/messages", json=body, headers=SALES)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "billing_error"
    assert "web search" in error["message"] and "tools[0]" in error["message"]
    assert len(emulator.requests_to("/v1/messages")) == 1
    latest = spans(gw)[0]
    assert (latest.status, latest.error_type) == ("rejected", "budget_exceeded")
    without = {**body, "tools": [{"name": "web_search", "input_schema": {"type": "object"}}]}
    assert gw.client.post("/v1/messages", json=without, headers=SALES).status_code == 200


@pytest.mark.parametrize("require_key", [True, False])
def test_a_key_of_another_service_beside_the_gateways_does_not_hide_it(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, require_key: bool
) -> None:
    """An Anthropic client given both an API key and an auth token sends both: a shell's
    ``ANTHROPIC_API_KEY`` (Anthropic's own, ``sk-ant-...``) as ``X-Api-Key`` and the gateway
    key (``ANTHROPIC_AUTH_TOKEN``) as a bearer. The first header there was the key: the
    call was refused under ``--require-key`` (told to send the bearer it had sent), and
    charged to the defaults without. The first of the gateway's own keys is the key."""
    gw = app_on(emulator.url, sqlite_url, require_key=require_key)
    _, secret = gw.ledger.create_key(name="claude", tenant="acme", department="sales")
    body = {"model": "llama3.1:8b", "max_tokens": 9, "messages": USER}
    both = {"X-Api-Key": "sk-ant-api03-abc", "Authorization": f"Bearer {secret}"}
    reply = gw.client.post("/v1/messages", json=body, headers=both)
    assert reply.status_code == 200, reply.text
    (span,) = spans(gw)
    assert (span.tenant, span.department) == ("acme", "sales")
    # Two of the gateway's keys: the first is the key, live or not (never the other one).
    gw.ledger.revoke_key(gw.ledger.keys()[0].id)
    _, other = gw.ledger.create_key(name="other", tenant="acme", department="ops")
    two = {"X-Api-Key": secret, "Authorization": f"Bearer {other}"}
    assert gw.client.post("/v1/messages", json=body, headers=two).status_code == 401


def test_a_client_that_hangs_up_mid_stream_stops_ollama_and_its_span_is_client_abort(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.05
    try:
        client = client_of(sqlite_gateway)
        with client.messages.stream(model="llama3.1:8b", max_tokens=1000, messages=USER) as s:
            next(iter(s.text_stream))  # the first text, then the client leaves
        span = left_mid_stream(sqlite_gateway, emulator)
    finally:
        emulator.token_latency = 0.0
    reply = expected_reply("llama3.1:8b", [{"role": "user", "content": ASKED}])
    assert 1 <= span.output_tokens < reply.output_tokens


def test_blocks_ollama_cannot_convert_are_its_400s_in_anthropics_shape_and_spans(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """The gateway leaves these to Ollama (its converter decides): the client gets Ollama's
    word, and the call that reached it is a span."""
    for block, said in (
        ({"type": "image", "source": {"type": "url", "url": "http://x"}}, "invalid image source type: url. Only base64 images are supported."),
        ({"type": "image"}, "invalid image source"),
        ({"type": "tool_use", "id": "", "name": "f", "input": {}}, "tool_use block missing required 'id' field"),
    ):  # fmt: skip
        body = {"model": "llama3.1:8b", "max_tokens": 9, "messages": [{"role": "user", "content": [block]}]}  # fmt: skip
        reply = sqlite_app.client.post("/v1/messages", json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": said},
        }
    assert len(emulator.requests_to("/v1/messages")) == 3
    assert [(s.status, s.http_status) for s in spans(sqlite_app)] == [("error", 400)] * 3


def test_a_messages_route_the_gateway_does_not_serve_is_refused_in_anthropics_shape(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """The Anthropic client's ``count_tokens`` (and ``batches``) live under ``/v1/messages/``: it
    got OpenAI's error object there, with no ``not_found_error`` for it to read."""
    with pytest.raises(anthropic.NotFoundError) as refused:
        client_of(sqlite_gateway).messages.count_tokens(model="llama3.1:8b", messages=USER)
    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "POST /v1/messages/count_tokens is not a route this gateway serves",
        },
    }
    assert emulator.requests == []
