"""The gateway with the official ollama and openai clients: exact spans, every error path."""

from __future__ import annotations

import json
import re
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import ollama
import openai
import pytest
from sqlalchemy import event

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.meter import estimate_tokens
from ollama_meter.pricing import PriceRule
from ollama_meter.records import Limit
from ollama_meter.testing import (
    Fault,
    OllamaEmulator,
    expected_counts,
    expected_reply,
    unreachable_url,
)
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
EXPECTED = expected_reply("llama3.1:8b", HI)
SALES = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales", "X-Ometer-User": "carol"}


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


def price(gw: Gateway) -> None:
    gw.ledger.add_price_rule(token_prices())


def test_ollama_client_streaming_and_not(gateway: Gateway) -> None:
    price(gateway)
    client = ollama.Client(host=gateway.url, headers=SALES)
    whole = client.chat(model="llama3.1:8b", messages=HI)
    assert whole.message.content == EXPECTED.content
    chunks = list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
    assert len(chunks) == EXPECTED.output_tokens + 1
    assert "".join(c.message.content or "" for c in chunks) == EXPECTED.content
    streamed, plain = spans(gateway)
    for span, stream in ((plain, False), (streamed, True)):
        assert (span.source, span.tenant, span.department, span.user) == (
            "gateway",
            "acme",
            "sales",
            "carol",
        )
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            EXPECTED.prompt_tokens,
            EXPECTED.output_tokens,
            "reported",
        )
        assert span.cost_total == EXPECTED.prompt_tokens * 1000 + EXPECTED.output_tokens * 2000
        assert span.stream is stream and span.status == "ok" and span.operation == "chat"
    assert streamed.ttft_ns is not None and streamed.ttft_ns <= streamed.latency_ns


def test_generate_embed_and_legacy_embeddings(gateway: Gateway) -> None:
    client = ollama.Client(host=gateway.url)
    generated = client.generate(model="mistral:7b", prompt="a haiku about disks")
    assert generated.response == expected_reply("mistral:7b", prompt="a haiku about disks").content
    assert len(client.embed(model="nomic-embed-text", input=["a", "b c"]).embeddings) == 2
    assert len(client.embeddings(model="nomic-embed-text", prompt="a b").embedding) == 768
    ops = {s.operation: s for s in spans(gateway)}
    assert set(ops) == {"generate", "embed", "embeddings"}
    assert ops["embed"].input_tokens == 3 and ops["embed"].output_tokens == 0
    assert ops["embeddings"].token_source == "estimated"


def test_a_call_that_only_loads_or_unloads_a_model_is_a_span_with_no_tokens_or_busy_time(
    gateway: Gateway,
) -> None:
    """An empty prompt (or no messages) only loads the model; with ``keep_alive: 0`` it unloads
    it. Ollama answers ``done_reason`` ``load`` or ``unload`` and no counts: nothing was
    evaluated or generated, so the span counts 0 tokens (exactly) and no busy time; a load's
    time is the meter's clock, charged as a load (only with ``charge_load``)."""
    from ollama_meter.pricing import to_micros

    for pattern, charge_load in (("llama3.1:*", False), ("qwen2.5:*", True)):
        gateway.ledger.add_price_rule(
            PriceRule(
                pattern=pattern, currency="USD", gpu_hour=Decimal("3.60"), charge_load=charge_load
            )
        )
    client = ollama.Client(host=gateway.url)
    assert client.generate(model="llama3.1:8b").done_reason == "load"
    assert client.chat(model="qwen2.5:7b", messages=[], stream=True).__next__().done
    assert client.generate(model="llama3.1:8b", keep_alive=0).done_reason == "unload"
    assert client.chat(model="qwen2.5:7b", messages=[], keep_alive=0).done_reason == "unload"
    unload_chat, unload_generate, load_chat, load_generate = spans(gateway)
    for span, reason in (
        (load_generate, "load"),
        (load_chat, "load"),
        (unload_generate, "unload"),
        (unload_chat, "unload"),
    ):
        assert (span.status, span.done_reason) == ("ok", reason)
        assert (span.input_tokens, span.output_tokens, span.token_source) == (0, 0, "reported")
        assert (span.prompt_eval_duration_ns, span.eval_duration_ns) == (0, 0)
        assert span.ttft_ns is None  # no token came
    for load in (load_generate, load_chat):
        assert load.duration_source == "measured"
        assert load.load_duration_ns == load.latency_ns - load.queue_ns > 0
    assert load_generate.cost_total == 0  # llama3.1: charge_load is off
    assert load_chat.cost_total == to_micros(
        Decimal(load_chat.load_duration_ns) / 10**9 / 3600 * Decimal("3.60")
    )
    for unload in (unload_generate, unload_chat):
        assert (unload.duration_source, unload.load_duration_ns) == ("reported", None)
        assert unload.cost_total == 0


def test_an_embedding_of_no_input_only_loads_the_model(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """No input to embed: Ollama loads the model and answers no vectors and no counts. The
    span counts 0 input tokens (exactly) and its time as the load's, not as busy time."""
    gateway.ledger.add_price_rule(
        PriceRule(pattern="*", currency="USD", gpu_hour=Decimal("3.60"), input_per_1m=Decimal(1))
    )
    client = ollama.Client(host=gateway.url)
    assert client.embed(model="nomic-embed-text", input=[]).embeddings == []
    assert client.embeddings(model="nomic-embed-text", prompt="").embedding == []
    assert emulator.requests[-2].body["input"] == []  # the client sent it as it was given
    legacy, embed = spans(gateway)
    for span in (embed, legacy):
        assert (span.status, span.input_tokens, span.output_tokens) == ("ok", 0, 0)
        assert span.token_source == "reported"
        assert (span.prompt_eval_duration_ns, span.eval_duration_ns) == (0, 0)
        assert span.load_duration_ns == span.latency_ns - span.queue_ns
        assert span.duration_source == "measured" and span.cost_total == 0


def test_openai_client_gets_what_it_asked_for(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", default_headers=SALES)
    whole = client.chat.completions.create(model="llama3.1:8b", messages=HI)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == EXPECTED.content
    assert whole.usage is not None and whole.usage.completion_tokens == EXPECTED.output_tokens
    chunks = list(client.chat.completions.create(model="llama3.1:8b", messages=HI, stream=True))  # type: ignore[arg-type]
    assert all(
        c.usage is None for c in chunks
    )  # did not ask: the extra usage chunk is not forwarded
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED.content
    asked = list(
        client.chat.completions.create(
            model="llama3.1:8b",
            messages=HI,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].choices == []
    embedded = client.embeddings.create(model="nomic-embed-text", input="one two")
    assert len(embedded.data[0].embedding) == 768
    recorded = spans(gateway)
    chat_spans = [s for s in recorded if s.operation == "openai.chat"]
    assert len(chat_spans) == 3
    for span in chat_spans:
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            EXPECTED.prompt_tokens,
            EXPECTED.output_tokens,
            "reported",
        )
    assert {s.operation for s in recorded} == {"openai.chat", "openai.embeddings"}


@pytest.mark.parametrize("stream", [False, True])
def test_counts_ollama_leaves_out_are_estimated_on_its_openai_routes_too(
    sqlite_gateway: Gateway, emulator: OllamaEmulator, stream: bool
) -> None:
    # Ollama's native answers omit a count that is zero; its OpenAI layer writes the same
    # count as 0. Either way Ollama did not count: a reply is never recorded as free.
    gateway = sqlite_gateway
    price(gateway)
    emulator.inject(Fault.OMIT_COUNTS, times=4)
    native = ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=stream)
    if stream:
        list(native)  # type: ignore[call-overload]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="llama3.1:8b", messages=HI, stream=stream)  # type: ignore[call-overload]
    if stream:
        list(answer)
    ollama.Client(host=gateway.url).embed(model="nomic-embed-text", input="one two three")
    client.embeddings.create(model="nomic-embed-text", input="one two three")
    openai_embed, native_embed, openai_chat, native_chat = spans(gateway)
    # Estimated alike: the prompt from its text, the reply from its pieces (or its text).
    output = EXPECTED.output_tokens if stream else estimate_tokens(EXPECTED.content)
    prompt = estimate_tokens(HI[0]["content"])
    for span in (native_chat, openai_chat):
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            prompt,
            output,
            "estimated",
        )
        assert span.cost_total == prompt * 1000 + output * 2000
    for span in (native_embed, openai_embed):
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            estimate_tokens("one two three"),
            0,
            "estimated",
        )


def test_openai_legacy_completions_are_metered(gateway: Gateway) -> None:
    prompt = "write a limerick about invoices"
    expected = expected_reply("mistral:7b", prompt=prompt)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", default_headers=SALES)
    whole = client.completions.create(model="mistral:7b", prompt=prompt)
    assert whole.choices[0].text == expected.content
    chunks = list(client.completions.create(model="mistral:7b", prompt=prompt, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)  # the usage chunk stays hidden
    assert "".join(c.choices[0].text for c in chunks) == expected.content
    recorded = spans(gateway)
    assert [(s.operation, s.stream, s.status) for s in recorded] == [
        ("openai.completions", True, "ok"),
        ("openai.completions", False, "ok"),
    ]
    for span in recorded:
        assert (span.input_tokens, span.output_tokens, span.token_source) == (
            expected.prompt_tokens,
            expected.output_tokens,
            "reported",
        )
        assert (span.department, span.user) == ("sales", "carol")


def test_passthrough_and_admin_refusal(
    app: Any, emulator: OllamaEmulator, app_gateway: Gateway
) -> None:
    client = app_gateway.client
    assert "llama3.1:8b" in [m["model"] for m in client.get("/api/tags").json()["models"]]
    assert client.get("/api/version").json()["version"]
    assert client.get("/").text == "Ollama is running"
    assert client.head("/").status_code == 200
    assert client.get("/v1/models").json()["data"]
    assert client.post("/api/show", json={"model": "llama3.1:8b"}).status_code == 200
    refused = client.post("/api/pull", json={"model": "x"})
    assert refused.status_code == 403 and "--allow-admin" in refused.json()["error"]
    deleted = client.request("DELETE", "/api/delete", json={"model": "x"})
    assert deleted.status_code == 403
    allowed = app(emulator.url, allow_admin=True)
    assert allowed.client.post("/api/pull", json={"model": "x"}).status_code != 403
    assert spans(app_gateway) == []  # nothing metered


def test_client_mistakes_are_400_in_the_right_shape_and_spans(app_gateway: Gateway) -> None:
    gateway, client = app_gateway, app_gateway.client
    bad = client.post("/api/chat", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid JSON body")
    assert client.post("/api/chat", json={"messages": []}).json() == {"error": "model is required"}
    openai_bad = client.post("/v1/chat/completions", json={"messages": []})
    assert (
        openai_bad.status_code == 400
        and openai_bad.json()["error"]["message"] == "model is required"
    )
    names = client.post(
        "/api/chat",
        json={"model": "llama3.1:8b"},
        headers={"X-Ometer-Department": "no spaces"},
    )
    assert names.status_code == 400 and "department name" in names.json()["error"]
    assert client.post("/api/chat", json=[1]).status_code == 400
    recorded = spans(gateway)
    assert len(recorded) == 5 and {s.error_type for s in recorded} == {"bad_request"}
    assert {s.http_status for s in recorded} == {400}


def test_unknown_model_is_the_upstreams_404(app_gateway: Gateway, emulator: OllamaEmulator) -> None:
    missing = app_gateway.client.post(
        "/api/chat", json={"model": "nope:1b", "messages": HI, "stream": False}
    )
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    assert len(emulator.requests_to("/api/chat")) == 1  # a 4xx is never retried
    (span,) = spans(app_gateway)
    assert (span.error_type, span.http_status) == ("model_not_found", 404)


def test_unreachable_upstream_is_502_naming_it(app: Any) -> None:
    dead = unreachable_url()
    gw = app(dead)
    reply = gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": HI})
    assert reply.status_code == 502 and dead in reply.json()["error"]
    (span,) = spans(gw)
    assert (span.error_type, span.http_status) == ("connection", 502)  # as the caller was told
    for _ in range(2):
        gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": HI})
    open_circuit = gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": HI})
    assert open_circuit.status_code == 503 and int(open_circuit.headers["retry-after"]) > 0
    assert (spans(gw)[0].error_type, spans(gw)[0].http_status) == ("circuit_open", 503)
    assert gw.client.get("/healthz").status_code == 503


def test_budget_refusal_is_429_with_retry_after(
    app_gateway: Gateway, emulator: OllamaEmulator
) -> None:
    gateway = app_gateway
    price(gateway)
    gateway.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1, currency="USD")
    )
    before = len(emulator.calls)
    reply = gateway.client.post(
        "/api/chat", json={"model": "llama3.1:8b", "messages": HI}, headers=SALES
    )
    assert reply.status_code == 429 and "budget" in reply.json()["error"]
    assert 0 < int(reply.headers["retry-after"]) <= 86400
    assert len(emulator.calls) == before
    (refused,) = spans(gateway)
    assert refused.status == "rejected"
    assert reply.headers["x-ometer-span-id"] == refused.id  # the README: every metered answer
    openai_reply = gateway.client.post(
        "/v1/chat/completions",
        json={"model": "llama3.1:8b", "messages": HI},
        headers=SALES,
    )
    assert openai_reply.status_code == 429 and "budget" in openai_reply.json()["error"]["message"]


def test_openai_clients_can_tell_an_exhausted_budget_from_a_rate_limit(
    serve: Any, emulator: OllamaEmulator, db_url: str
) -> None:
    # OpenAI's own 429s say which: "insufficient_quota" (do not retry: the money is spent)
    # or "rate_limit_exceeded" (retry later); neither is an invalid request.
    ledger = open_ledger(db_url)
    ledger.add_price_rule(token_prices())
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1, currency="USD")
    )
    ledger.set_limit(Limit("acme", "hr", rpm=1))
    gateway = serve(emulator.url)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as spent:
        client.chat.completions.create(model="llama3.1:8b", messages=HI, extra_headers=SALES)  # type: ignore[arg-type]
    assert (spent.value.type, spent.value.code) == ("insufficient_quota", "insufficient_quota")
    assert "budget" in spent.value.message
    hr = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "hr"}
    client.embeddings.create(model="nomic-embed-text", input="one", extra_headers=hr)
    with pytest.raises(openai.RateLimitError) as limited:
        client.embeddings.create(model="nomic-embed-text", input="two", extra_headers=hr)
    assert (limited.value.type, limited.value.code) == ("requests", "rate_limit_exceeded")
    assert int(limited.value.response.headers["retry-after"]) > 0
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llama3.1:8b", messages="hi")  # type: ignore[arg-type]
    assert bad.value.type == "invalid_request_error"
    rejected = [(s.department, s.status, s.error_type) for s in spans(gateway)]
    assert rejected == [
        ("unassigned", "error", "bad_request"),
        ("hr", "rejected", "rate_limited"),
        ("hr", "ok", None),
        ("sales", "rejected", "budget_exceeded"),
    ]


def test_keys_map_to_attribution_and_revocation_is_immediate(
    app: Any, emulator: OllamaEmulator
) -> None:
    gw = app(emulator.url, require_key=True)
    key, secret = gw.ledger.create_key(name="crm-bot", tenant="acme", department="sales")
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    assert gw.client.post("/api/chat", json=body).status_code == 401
    assert (
        gw.client.post(
            "/api/chat", json=body, headers={"Authorization": "Bearer om_wrong"}
        ).status_code
        == 401
    )
    spoof = {
        "Authorization": f"Bearer {secret}",
        "X-Ometer-Department": "marketing",
        "X-Ometer-Tenant": "globex",
    }
    assert gw.client.post("/api/chat", json=body, headers=spoof).status_code == 200
    assert (
        gw.client.post("/api/chat", json=body, headers={"X-Ometer-Key": secret}).status_code == 200
    )
    ok = [s for s in spans(gw) if s.status == "ok"]
    assert {(s.tenant, s.department) for s in ok} == {("acme", "sales")}
    gw.ledger.revoke_key(key.id)
    assert (
        gw.client.post("/api/chat", json=body, headers={"X-Ometer-Key": secret}).status_code == 401
    )
    # Refusals without a key are counted, not written: nobody can grow the ledger without one.
    assert [s.status for s in spans(gw)] == ["ok", "ok"]


def test_key_without_requirement_sets_default_attribution(app_gateway: Gateway) -> None:
    gateway = app_gateway
    _, secret = gateway.ledger.create_key(name="bot", tenant="globex", department="research")
    headers = {"Authorization": f"Bearer {secret}"}
    gateway.client.post(
        "/api/chat",
        json={"model": "llama3.1:8b", "messages": HI, "stream": False},
        headers=headers,
    )
    gateway.client.post(
        "/api/chat",
        json={"model": "llama3.1:8b", "messages": HI, "stream": False},
        headers={**headers, "X-Ometer-Department": "ops"},
    )
    assert [(s.tenant, s.department) for s in spans(gateway)] == [
        ("globex", "ops"),
        ("globex", "research"),
    ]


def test_without_keys_required_a_header_user_wins_over_the_key_and_is_unverified(
    app_gateway: Gateway,
) -> None:
    """As a header's tenant and department do: the key's user rules hold with --require-key
    (README, attribution), and here the span says the user is only what a header claimed."""
    gateway = app_gateway
    _, fixed = gateway.ledger.create_key(name="a", tenant="acme", department="sales", user="alice")
    _, listed = gateway.ledger.create_key(name="b", tenant="acme", department="ops", users=("bob",))
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    for key, user in ((fixed, "mallory"), (listed, "mallory"), (listed, "bob"), (fixed, None)):
        headers = {"X-Ometer-Key": key, **({"X-Ometer-User": user} if user else {})}
        assert gateway.client.post("/api/chat", json=body, headers=headers).status_code == 200
    assert [(s.department, s.user, s.tags) for s in reversed(spans(gateway))] == [
        ("sales", "mallory", {"user_verified": "false"}),
        ("ops", "mallory", {"user_verified": "false"}),
        ("ops", "bob", {}),
        ("sales", "alice", {}),
    ]


def test_a_key_that_is_not_live_is_refused_even_when_keys_are_not_required(
    app_gateway: Gateway,
) -> None:
    """A caller that sends one of our keys asks to be charged to it: a revoked or mistyped
    key was dropped without a word and its calls charged to the defaults, so a rotated key
    kept working for months on nobody's budget. An OpenAI client's own api_key is no key."""
    gateway = app_gateway
    key, secret = gateway.ledger.create_key(name="bot", tenant="globex", department="research")
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    gateway.ledger.revoke_key(key.id)
    for headers in (
        {"Authorization": f"Bearer {secret}"},
        {"X-Ometer-Key": secret, "X-Ometer-Department": "ops"},
        {"X-Ometer-Key": secret[:-1]},
    ):
        refused = gateway.client.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["message"] == (
            "this API key is not a live key (revoked, expired, or mistyped): send a live one "
            "(`ometer keys list`), or none to be charged to the defaults"
        )
    assert gateway.client.get("/api/tags", headers={"X-Ometer-Key": secret}).status_code == 200
    plain = gateway.client.post("/api/chat", json=body, headers={"Authorization": "Bearer ollama"})
    assert plain.status_code == 200
    assert [(s.tenant, s.department) for s in spans(gateway)] == [("default", "unassigned")]


def test_client_hang_up_mid_stream_cancels_upstream_and_records_abort(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.token_latency = 0.05
    try:
        with httpx.stream(
            "POST", f"{gateway.url}/api/chat", json={"model": "llama3.1:8b", "messages": HI}
        ) as reply:
            lines = reply.iter_lines()
            next(lines)
            next(lines)
        # the gateway notices on its next write; give it a moment
        import time

        deadline = time.monotonic() + 10
        while not (spans(gateway) and emulator.hangups) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        emulator.token_latency = 0.0
    assert emulator.hangups == 1  # the gateway dropped its upstream stream too
    (span,) = spans(gateway)
    assert (span.status, span.error_type, span.token_source) == (
        "client_abort",
        "client_abort",
        "estimated",
    )
    assert 2 <= span.output_tokens < EXPECTED.output_tokens


@pytest.mark.parametrize(
    ("prompt", "estimated"),
    [
        ("hello there", 3),  # 11 bytes: four characters of English a token, as ever
        ("你好，世界", 4),  # 15 bytes: was 2 (five characters), a quarter of what it is
        ("Привет", 3),  # 12 bytes: was 2
        ("é" * 9, 5),  # 18 bytes: was 3
    ],
)
def test_a_prompt_ollama_never_counted_is_estimated_from_its_utf8_bytes(
    gateway: Gateway, emulator: OllamaEmulator, prompt: str, estimated: int
) -> None:
    """A stream cut before Ollama's counts is charged an estimate of its prompt: four
    characters a token charged a Chinese prompt about a quarter of its tokens (a character
    is about one), so a caller writing in it who hung up early paid a quarter of the price.
    Four bytes of UTF-8 a token is English's four characters still, and a CJK character's
    three bytes are nearer its token."""
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=3)
    messages = [{"role": "user", "content": prompt}]
    with pytest.raises(ollama.ResponseError):
        list(
            ollama.Client(host=gateway.url).chat(
                model="llama3.1:8b", messages=messages, stream=True
            )
        )
    (span,) = spans(gateway)
    assert (span.error_type, span.input_tokens, span.token_source) == (
        "stream_error",
        estimated,
        "estimated",
    )


def test_mid_stream_error_is_relayed_and_recorded(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.inject(Fault.MIDSTREAM_ERROR, after_tokens=3)
    with pytest.raises(ollama.ResponseError):
        list(ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=True))
    (span,) = spans(gateway)
    assert (span.error_type, span.output_tokens, span.token_source) == (
        "stream_error",
        3,
        "estimated",
    )


def test_healthz(app_gateway: Gateway) -> None:
    health = app_gateway.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {
        "status": "ok",
        "ledger": "ok",
        "upstream": "ok",
    }


def test_healthz_reads_no_span_so_a_probe_costs_the_same_at_any_size(
    app_gateway: Gateway,
) -> None:
    """A load balancer asks every few seconds; counting the spans (once the check) took 7 s
    of disk reads on a 10M-span ledger. It asks the ledger one row instead."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.lower())

    engine = app_gateway.ledger.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert app_gateway.client.get("/healthz").json()["ledger"] == "ok"
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements  # the ledger was asked
    assert not [s for s in statements if re.search(r"\bspans\b", s)], statements


def test_count_helper_agrees() -> None:
    assert expected_counts("llama3.1:8b", HI) == (EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    assert json.loads(json.dumps({"a": 1})) == {"a": 1}


def test_upstream_dropping_the_connection_is_a_stream_error(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.inject(Fault.DROP, after_tokens=3)
    with httpx.stream(
        "POST", f"{gateway.url}/api/chat", json={"model": "llama3.1:8b", "messages": HI}
    ) as reply:
        lines = [json.loads(line) for line in reply.iter_lines()]
    assert len(lines) == 4 and not any(line.get("done") for line in lines)
    assert "broke off" in lines[-1]["error"]  # the client is told, as Ollama itself would
    emulator.inject(Fault.DROP, times=3)  # every attempt of the non-streamed call
    whole = httpx.post(
        f"{gateway.url}/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
    )
    assert whole.status_code == 502 and gateway.url not in whole.json()["error"]
    aborted, streamed = spans(gateway)
    assert (streamed.status, streamed.error_type, streamed.output_tokens) == (
        "error",
        "stream_error",
        3,
    )
    assert aborted.status == "error" and aborted.error_type in ("stream_error", "connection")


def test_silent_upstream_is_504_and_a_timeout_span(
    app: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_UPSTREAM_TIMEOUT", "0.5")
    gw = app(emulator.url)
    emulator.inject(Fault.HANG, times=3)
    reply = gw.client.post(
        "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
    )
    assert reply.status_code == 504 and "did not answer in time" in reply.json()["error"]
    (span,) = spans(gw)  # its status as the caller got it (a span said none: Ollama gave none)
    assert (span.status, span.error_type, span.http_status) == ("error", "timeout", 504)


def test_flaky_upstream_is_retried_for_whole_answers_and_metered_once(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    emulator.inject(Fault.HTTP_503, times=2)
    whole = ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=False)
    assert whole.message.content == EXPECTED.content
    assert len(emulator.requests_to("/api/chat")) == 3
    (span,) = spans(gateway)
    assert (span.status, span.output_tokens) == ("ok", EXPECTED.output_tokens)
    # A stream that failed before its first chunk is retried too: the client saw nothing yet.
    emulator.inject(Fault.HTTP_503)
    chunks = list(
        ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=True)
    )
    assert "".join(c.message.content or "" for c in chunks) == EXPECTED.content
    assert len(emulator.requests_to("/api/chat")) == 5
    assert [s.status for s in spans(gateway)] == ["ok", "ok"]
    # Past the retries, the client gets Ollama's own 503 and the span says so.
    emulator.inject(Fault.HTTP_503, times=3)
    with pytest.raises(ollama.ResponseError) as busy:
        list(ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=True))
    assert busy.value.status_code == 503
    assert spans(gateway)[0].error_type == "upstream_5xx"


def test_openai_routes_price_gpu_time_on_the_meters_clock(gateway: Gateway) -> None:
    """Ollama's /v1 answers carry no durations: the gateway's timing stands in, and says so."""
    from ollama_meter.pricing import Usage, compute_cost, to_micros

    rule = gateway.ledger.add_price_rule(
        PriceRule(pattern="llama3.1:*", currency="USD", gpu_hour=Decimal("3.60"))
    )
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", default_headers=SALES)
    client.chat.completions.create(model="llama3.1:8b", messages=HI)  # type: ignore[arg-type]
    list(client.chat.completions.create(model="llama3.1:8b", messages=HI, stream=True))  # type: ignore[arg-type]
    ollama.Client(host=gateway.url).chat(model="llama3.1:8b", messages=HI, stream=False)
    native, streamed, whole = spans(gateway)
    # From when the call was sent: time waiting for a slot in the gateway is not Ollama's.
    assert (whole.duration_source, whole.prompt_eval_duration_ns) == ("measured", 0)
    assert whole.eval_duration_ns == whole.latency_ns - whole.queue_ns
    assert streamed.duration_source == "measured" and streamed.ttft_ns is not None
    assert streamed.prompt_eval_duration_ns == streamed.ttft_ns - streamed.queue_ns
    assert streamed.eval_duration_ns == streamed.latency_ns - streamed.ttft_ns
    assert native.duration_source == "reported"
    assert native.eval_duration_ns == EXPECTED.eval_duration
    for span in (native, streamed, whole):
        busy = Usage(
            input_tokens=span.input_tokens,
            output_tokens=span.output_tokens,
            prompt_eval_ns=span.prompt_eval_duration_ns,
            eval_ns=span.eval_duration_ns,
        )
        assert span.cost_compute == compute_cost(rule, busy, currency="USD").compute > 0
        assert span.cost_total == span.cost_compute and span.price_rule_id == rule.id
    # 3.60 an hour is 1 micro-unit per millisecond of busy time
    assert whole.cost_compute == to_micros(
        Decimal(whole.latency_ns - whole.queue_ns) / 10**9 / 3600 * Decimal("3.60")
    )


class _Oversized(BaseHTTPRequestHandler):
    """An upstream whose answers are longer than the gateway reads: declared, or chunked."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"model": "m", "message": {"content": "x" * 5_000}, "done": True})
        status = 200 if self.path == "/api/chat" else 500
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.server.chunked:  # type: ignore[attr-defined]
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for at in range(0, len(body), 1_000):
                piece = body[at : at + 1_000].encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_longer_than_the_gateway_reads_is_a_502_and_an_error_span(
    app: Any, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """A non-streamed answer (or an error's body) is read whole: past the limit the upstream
    lies, the caller gets a 502 and the ledger an error span, and memory stays bounded."""
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 2_000)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Oversized)
    server.chunked = chunked  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app(f"http://127.0.0.1:{server.server_address[1]}")
        reply = gw.client.post("/api/chat", json={"model": "m", "messages": HI, "stream": False})
        assert reply.status_code == 502
        assert "an answer of more than 2000 bytes" in reply.json()["error"]
        refused = gw.client.post(
            "/api/generate", json={"model": "m", "prompt": "hi", "stream": False}
        )
        assert refused.status_code >= 500 and "more than 2000 bytes" in refused.text
    finally:
        server.shutdown()
        server.server_close()
    failed = spans(gw)
    assert [(s.status, s.operation) for s in failed] == [("error", "generate"), ("error", "chat")]
    assert all(s.error_type for s in failed)


class _SaysNothingRan(BaseHTTPRequestHandler):
    """An upstream that answers every call as if it only loaded the model, whatever it was sent."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        answer: dict[str, Any] = {"model": "m", "embeddings": []}
        if self.path != "/api/embed":
            answer = {"model": "m", "response": "", "done": True, "done_reason": "load"}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_that_says_nothing_ran_to_a_call_with_a_prompt_is_not_believed(
    app: Any,
) -> None:
    """Ollama only loads a model for an empty prompt: "loaded, nothing ran" in answer to a real
    prompt (a proxy, a lie) would make the call free, so its counts are estimated instead."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SaysNothingRan)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        gw = app(f"http://127.0.0.1:{server.server_address[1]}")
        prompt = "a prompt of seven words to be counted"
        for path, body in (
            ("/api/generate", {"model": "m", "prompt": prompt, "stream": False}),
            ("/api/embed", {"model": "m", "input": prompt}),
        ):
            assert gw.client.post(path, json=body).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    embedded, generated = spans(gw)
    for span, operation in ((generated, "generate"), (embedded, "embed")):
        assert (span.operation, span.input_tokens, span.token_source) == (
            operation,
            estimate_tokens(prompt),
            "estimated",
        )
        assert (span.duration_source, span.load_duration_ns) == ("measured", None)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "abcd" * 1000}]}),
        ("/api/generate", {"model": "llama3.1:8b", "prompt": "abcd" * 1000, "stream": False}),
    ],
)  # fmt: skip
def test_a_whole_answer_lost_on_the_way_is_still_charged_its_prompt(
    app: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch, path: str, body: Any
) -> None:
    """Ollama writes a non-streamed answer once it has all of it: a 200 means the work was
    done, even when the gateway cannot take that answer (larger than it reads; an embedding
    batch that large is relayed instead: test_big_answers.py). Such a call was an error span
    charged nothing, a silent $0; its prompt is now charged, estimated, as a broken
    stream's is."""
    from ollama_meter.upstream import _pooled

    monkeypatch.setattr(_pooled, "MAX_ANSWER_BYTES", 200)
    gw = app(emulator.url)
    gw.ledger.add_price_rule(token_prices())
    reply = gw.client.post(path, json=body)
    assert reply.status_code == 502
    message = (
        "the stream from Ollama at " + emulator.url + " broke off: an answer of more than 200 bytes"
    )
    assert reply.json() == (
        {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        if path.startswith("/v1/")
        else {"error": message}
    )
    [span] = spans(gw)
    assert (span.status, span.error_type, span.token_source) == (
        "error",
        "stream_error",
        "estimated",
    )
    assert (span.input_tokens, span.output_tokens) == (1000, 0)
    assert span.cost_total == 1_000_000  # 1000 tokens at 1000 USD per million, in micro-USD


def test_a_whole_answer_that_is_an_error_is_charged_nothing(
    app: Any, emulator: OllamaEmulator
) -> None:
    """What was read whole and says Ollama failed (a 200 carrying ``{"done": true,
    "done_reason": "error", ...}``, as a proxy sends it) did no work to charge."""
    gw = app(emulator.url)
    gw.ledger.add_price_rule(token_prices())
    emulator.inject(Fault.ERROR_DONE)
    reply = gw.client.post(
        "/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}
    )
    assert reply.status_code == 502
    [span] = spans(gw)
    assert (span.status, span.error_type) == ("error", "stream_error")
    assert (span.input_tokens, span.output_tokens, span.cost_total) == (0, 0, 0)
