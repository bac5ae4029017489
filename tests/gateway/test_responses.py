"""Ollama's OpenAI Responses API (``POST /v1/responses``) through the gateway, with the
official ``openai`` client: one span per call, exact tokens and money, every way it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import estimate_tokens
from ollama_meter.testing import Fault, OllamaEmulator, expected_reply
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, left_mid_stream

SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales", "X-Ometer-User": "carol"}
INSTRUCTIONS = "answer in one line"
ASKED = "hello from the crm bot"
EXPECTED = expected_reply(
    "llama3.1:8b",
    [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": ASKED}],
)


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


def client_of(gw: Gateway, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, default_headers=headers
    )


def test_the_official_client_gets_its_answer_and_each_call_one_exact_span(gateway: Gateway) -> None:
    gateway.ledger.add_price_rule(token_prices())
    client = client_of(gateway, **SALES)
    whole = client.responses.create(model="llama3.1:8b", instructions=INSTRUCTIONS, input=ASKED)
    assert whole.output_text == EXPECTED.content
    assert whole.usage is not None and whole.usage.output_tokens == EXPECTED.output_tokens
    events = list(
        client.responses.create(
            model="llama3.1:8b", instructions=INSTRUCTIONS, input=ASKED, stream=True
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == EXPECTED.content
    assert events[-1].type == "response.completed"  # relayed to its end, usage and all
    completed: Any = events[-1]
    assert completed.response.usage.input_tokens == EXPECTED.prompt_tokens
    streamed, plain = spans(gateway)
    for span, stream in ((plain, False), (streamed, True)):
        assert (span.operation, span.stream, span.status) == ("openai.responses", stream, "ok")
        assert (span.tenant, span.department, span.user) == ("acme", "sales", "carol")
        assert (span.request_model, span.response_model) == ("llama3.1:8b", "llama3.1:8b")
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            EXPECTED.prompt_tokens,
            EXPECTED.output_tokens,
            "reported",
        )
        assert span.cost_total == EXPECTED.prompt_tokens * 1000 + EXPECTED.output_tokens * 2000
    assert streamed.ttft_ns is not None and streamed.ttft_ns <= streamed.latency_ns


def test_input_as_message_items_is_metered_as_the_chat_ollama_makes_of_it(
    sqlite_gateway: Gateway,
) -> None:
    items: Any = [
        {"role": "developer", "content": "be terse"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
        {"role": "user", "content": "three four"},
    ]  # fmt: skip
    expected = expected_reply(
        "qwen2.5:7b",
        [{"content": text} for text in ("be terse", "one", "two", "three four")],
    )
    answer = client_of(sqlite_gateway).responses.create(model="qwen2.5:7b", input=items)
    assert answer.output_text == expected.content
    (span,) = spans(sqlite_gateway)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (
        expected.prompt_tokens,
        expected.output_tokens,
        "reported",
    )


@pytest.mark.parametrize("stream", [False, True])
def test_counts_ollama_did_not_take_are_estimated(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, stream: bool
) -> None:
    """Ollama writes a count it did not take as 0 in ``usage``: estimated, never free."""
    sqlite_gateway.ledger.add_price_rule(token_prices())
    emulator.inject(Fault.OMIT_COUNTS)
    answer: Any = client_of(sqlite_gateway).responses.create(
        model="llama3.1:8b", input=ASKED, stream=stream
    )
    if stream:
        list(answer)
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


def test_ollamas_errors_reach_the_client_in_openais_shape_and_are_spans(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    client = client_of(sqlite_gateway)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input=ASKED)
    assert "not found" in str(missing.value.message)
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=3)
    with pytest.raises(openai.APIError):
        list(client.responses.create(model="llama3.1:8b", input=ASKED, stream=True))
    broken, absent = spans(sqlite_gateway)
    assert (absent.status, absent.error_type, absent.http_status) == (
        "error",
        "model_not_found",
        404,
    )
    assert (broken.status, broken.error_type) == ("error", "stream_error")
    assert (broken.output_tokens, broken.token_source) == (3, "estimated")


def test_a_body_ollama_would_refuse_is_a_400_in_openais_shape_and_a_span(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    for body, said in (
        ({"model": "llama3.1:8b", "input": 7}, "input: has the wrong type, got a number"),
        (
            {"model": "llama3.1:8b", "input": "hi", "max_output_tokens": 8.5},
            "max_output_tokens: input should be a valid integer, got a number",
        ),
        (
            {"model": "llama3.1:8b", "input": "hi", "Instructions": "x" * 9},
            'body: "Instructions" is "instructions" spelled another way, which Ollama would '
            'read as "instructions"; spell it "instructions"',
        ),
    ):
        reply = sqlite_app.client.post("/v1/responses", json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"] == {
            "message": said,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    assert emulator.requests_to("/v1/responses") == []
    assert [s.error_type for s in spans(sqlite_app)] == ["bad_request"] * 3


def test_a_client_that_hangs_up_mid_stream_stops_ollama_and_its_span_is_written(
    sqlite_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.05
    body = {"model": "llama3.1:8b", "input": ASKED, "stream": True}
    try:
        with httpx.stream("POST", f"{sqlite_gateway.url}/v1/responses", json=body) as reply:
            lines = reply.iter_lines()
            while "output_text.delta" not in next(lines):
                pass
        span = left_mid_stream(sqlite_gateway, emulator)
    finally:
        emulator.token_latency = 0.0
    assert 1 <= span.output_tokens < EXPECTED.output_tokens


def test_under_a_hard_budget_ollama_gets_the_reply_cap_in_max_output_tokens(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """The cap a hard budget admits a call on must be in the field Ollama honours here:
    ``max_output_tokens`` (it ignores ``max_tokens`` on this route)."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    whole = expected_reply("llama3.1:8b", [{"role": "user", "content": ASKED}]).output_tokens
    # No cap of its own: the gateway's (OMETER_BUDGET_REPLY_CAP, 4096), which the reply fits.
    for cap, sent_cap, output in ((None, 4096, whole), (5, 5, 5)):
        body = {"model": "llama3.1:8b", "input": ASKED, "max_output_tokens": cap}
        reply = gw.client.post("/v1/responses", json=body, headers=SALES)
        assert reply.status_code == 200, reply.text
        sent = emulator.requests_to("/v1/responses")[-1].body
        assert (sent["max_output_tokens"], "max_tokens" in sent) == (sent_cap, False)
        assert spans(gw)[0].output_tokens == output


def test_a_reply_cap_past_a_hard_budget_is_refused_before_ollama(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1, currency="USD")
    )
    body = {"model": "llama3.1:8b", "input": "x " * 2_000, "max_output_tokens": 1_000}
    reply = gw.client.post("/v1/responses", json=body, headers=SALES)
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["type"] == "insufficient_quota"
    assert "max_output_tokens" in error["message"]  # the cap this route reads, not max_tokens
    assert emulator.requests_to("/v1/responses") == []
    assert spans(gw)[0].status == "rejected"


def test_captured_content_is_the_input_and_the_reply_text(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = serve_on(emulator.url, sqlite_url, config={"capture_content": True})
    client = client_of(gw)
    client.responses.create(model="llama3.1:8b", instructions=INSTRUCTIONS, input=ASKED)
    list(
        client.responses.create(
            model="llama3.1:8b", instructions=INSTRUCTIONS, input=ASKED, stream=True
        )
    )
    for span, stream in zip(spans(gw), (True, False), strict=True):
        assert (span.stream, span.prompt, span.reply) == (
            stream,
            f"{INSTRUCTIONS}\n{ASKED}",
            EXPECTED.content,
        )


def test_an_ollama_too_old_for_the_route_is_its_own_404_and_a_span(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """Before 0.13.3 Ollama has no ``/v1/responses``: the client gets its 404 as it came."""
    emulator.inject(Fault.NO_ROUTE)
    reply = sqlite_app.client.post("/v1/responses", json={"model": "llama3.1:8b", "input": "hi"})
    assert (reply.status_code, reply.text) == (404, "404 page not found")
    (span,) = spans(sqlite_app)
    assert (span.status, span.http_status) == ("error", 404)
