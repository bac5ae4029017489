"""The Ollama emulator, checked through the official client and on the raw wire."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import ollama
import pytest

from ollama_meter.testing import (
    DEFAULT_MODELS,
    OLLAMA_VERSION,
    OVERHEAD_NS,
    WARM_LOAD_NS,
    EmulatedModel,
    Fault,
    OllamaEmulator,
    expected_counts,
    expected_embedding,
    expected_reply,
    unreachable_url,
)

USER = [{"role": "user", "content": "Why is the sky blue on a clear day?"}]
CHAT_KEYS = ["model", "created_at", "message", "done_reason", "done"]
METRIC_KEYS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


@pytest.fixture(scope="module")
def shared() -> Iterator[OllamaEmulator]:
    with OllamaEmulator() as emu:
        yield emu


@pytest.fixture
def emu(shared: OllamaEmulator) -> OllamaEmulator:
    shared.reset()
    shared.latency = shared.token_latency = shared.progress_latency = 0.0
    return shared


@pytest.fixture
def client(emu: OllamaEmulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=emu.url, timeout=10) as c:
        yield c


@pytest.fixture
def http(emu: OllamaEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as c:
        yield c


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def drain(stream: Iterator[ollama.ChatResponse], into: list[str]) -> None:
    """Collect streamed contents until the stream ends or raises."""
    for part in stream:
        into.append(part.message.content or "")


def sse(response: httpx.Response) -> list[str]:
    assert response.text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in response.text.split("\n\n") if event]


# --- replies and metrics -----------------------------------------------------


def test_streamed_chat_sends_one_token_per_chunk_then_exact_metrics(client: ollama.Client) -> None:
    expected = expected_reply("llama3.1:8b", USER)
    parts = list(client.chat(model="llama3.1:8b", messages=USER, stream=True))

    assert [p.message.content for p in parts[:-1]] == list(expected.pieces)
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert final.message.content == ""
    assert final.prompt_eval_count == 9 == expected.prompt_tokens
    assert 8 <= final.eval_count == expected.output_tokens <= 40  # type: ignore[operator]
    assert final.load_duration == 3_000_000
    assert final.prompt_eval_duration == 9 * 2_500
    assert final.eval_duration == expected.output_tokens * 50_000
    assert final.total_duration == (
        3_000_000 + 9 * 2_500 + expected.output_tokens * 50_000 + OVERHEAD_NS
    )


def test_second_call_is_warm_and_reset_makes_it_cold(
    client: ollama.Client, emu: OllamaEmulator
) -> None:
    assert client.chat(model="qwen2.5:7b", messages=USER).load_duration == 2_750_000
    assert emu.is_loaded("qwen2.5:7b")
    assert client.chat(model="qwen2.5:7b", messages=USER).load_duration == WARM_LOAD_NS
    emu.reset()
    assert client.chat(model="qwen2.5:7b", messages=USER).load_duration == 2_750_000


def test_non_stream_equals_concatenated_stream(client: ollama.Client) -> None:
    streamed = list(client.chat(model="mistral:7b", messages=USER, stream=True))
    whole = client.chat(model="mistral:7b", messages=USER)
    assert whole.message.content == "".join(p.message.content or "" for p in streamed)
    assert whole.eval_count == streamed[-1].eval_count
    assert whole.prompt_eval_count == streamed[-1].prompt_eval_count

    gen_parts = list(
        client.generate(model="mistral:7b", prompt="Why?", system="Be brief.", stream=True)
    )
    gen = client.generate(model="mistral:7b", prompt="Why?", system="Be brief.")
    assert gen.response == "".join(p.response or "" for p in gen_parts)
    reply = expected_reply("mistral:7b", prompt="Why?", system="Be brief.")
    assert gen.response == reply.content
    assert (gen.prompt_eval_count, gen.eval_count) == (3, reply.output_tokens)


def test_reply_is_deterministic_and_num_predict_caps_it(client: ollama.Client) -> None:
    first = client.chat(model="llama3.1:8b", messages=USER).message.content or ""
    assert client.chat(model="llama3.1:8b", messages=USER).message.content == first

    capped = client.chat(model="llama3.1:8b", messages=USER, options={"num_predict": 5})
    assert capped.eval_count == 5
    assert capped.done_reason == "length"
    assert first.startswith(capped.message.content or "-")
    assert expected_counts("llama3.1:8b", USER, {"num_predict": 5}) == (9, 5)
    assert expected_counts("llama3.1:8b", USER, {"num_predict": -1}) == expected_counts(
        "llama3.1:8b", USER
    )


def test_fixed_reply_length_and_custom_models() -> None:
    tiny = EmulatedModel(
        name="tiny:1b",
        family="llama",
        parameter_size="1B",
        quantization_level="Q8_0",
        size=1_000,
        load_ns=10,
        prompt_ns_per_token=1,
        eval_ns_per_token=2,
        reply_tokens=4,
    )
    with OllamaEmulator(models=[tiny]) as emu, ollama.Client(host=emu.url) as c:
        reply = c.chat(model="tiny:1b", messages=USER)
        assert reply.eval_count == 4
        assert reply.done_reason == "stop"
        assert reply.total_duration == 10 + 9 + 8 + OVERHEAD_NS
        assert expected_reply(tiny, USER).content == reply.message.content


# --- the raw wire ------------------------------------------------------------


def test_stream_wire_format(http: httpx.Client) -> None:
    body = {"model": "llama3.1:8b", "messages": USER}  # stream defaults to true
    response = http.post("/api/chat", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "server" not in response.headers
    lines = response.text.split("\n")
    assert lines[-1] == ""
    assert all(" " not in line.split('"content"')[0] for line in lines[:-1])  # compact JSON
    chunks = [json.loads(line) for line in lines[:-1]]
    assert list(chunks[0]) == ["model", "created_at", "message", "done"]
    assert chunks[0]["message"] == {"role": "assistant", "content": chunks[0]["message"]["content"]}
    assert list(chunks[-1]) == CHAT_KEYS + METRIC_KEYS
    assert chunks[-1]["created_at"].endswith("Z")
    assert "T" in chunks[-1]["created_at"]


def test_zero_counts_and_durations_are_omitted(http: httpx.Client) -> None:
    body = {
        "model": "llama3.1:8b",
        "messages": USER,
        "stream": False,
        "options": {"num_predict": 0},
    }
    response = http.post("/api/chat", json=body)
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert int(response.headers["content-length"]) == len(response.content)
    final = response.json()
    assert "eval_count" not in final
    assert "eval_duration" not in final
    assert final["done_reason"] == "length"
    assert final["message"]["content"] == ""
    assert final["prompt_eval_count"] == 9

    empty = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": ""}], "stream": False}
    assert "prompt_eval_count" not in http.post("/api/chat", json=empty).json()


def test_generate_wire_fields(http: httpx.Client) -> None:
    chunks = ndjson(http.post("/api/generate", json={"model": "qwen2.5:7b", "prompt": "a b c"}))
    assert list(chunks[0]) == ["model", "created_at", "response", "done"]
    assert list(chunks[-1])[:6] == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
    ]
    assert chunks[-1]["prompt_eval_count"] == 3


def test_empty_prompt_loads_the_model(http: httpx.Client, emu: OllamaEmulator) -> None:
    loaded = http.post("/api/generate", json={"model": "mistral:7b"}).json()
    assert loaded["done"] is True
    assert loaded["done_reason"] == "load"
    assert emu.is_loaded("mistral:7b")
    unloaded = http.post("/api/chat", json={"model": "mistral:7b", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert not emu.is_loaded("mistral:7b")


def test_go_style_html_escaping(http: httpx.Client) -> None:
    body = {
        "model": "llama3.1:8b",
        "prompt": "a<b & c>d",
        "stream": False,
        "options": {"num_predict": 1},
    }
    assert b"\\u003c" not in http.post("/api/generate", json=body).content  # prompt is not echoed
    response = http.post("/api/chat", json={"model": "<x>", "messages": USER})
    assert response.content == b'{"error":"model \'\\u003cx\\u003e\' not found"}'


# --- errors ------------------------------------------------------------------


def test_unknown_model_is_404_through_the_client(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.3:70b", messages=USER)
    assert info.value.status_code == 404
    assert info.value.error == "model 'llama3.3:70b' not found"
    with pytest.raises(ollama.ResponseError, match="not found") as streamed:
        list(client.chat(model="llama3.3:70b", messages=USER, stream=True))
    assert streamed.value.status_code == 404
    # Embeddings ask Ollama's scheduler for the model, which says it another way.
    with pytest.raises(ollama.ResponseError) as embedding:
        client.embed(model="llama3.3:70b", input="hi")
    assert (embedding.value.status_code, embedding.value.error) == (
        404,
        'model "llama3.3:70b" not found, try pulling it first',
    )


def test_untagged_name_means_latest(client: ollama.Client, http: httpx.Client) -> None:
    assert client.embed(model="nomic-embed-text", input="hi").model == "nomic-embed-text"
    response = http.post("/api/chat", json={"model": "llama3.1", "messages": USER})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'llama3.1' not found"}


def test_request_errors(http: httpx.Client) -> None:
    bad = http.post("/api/chat", content=b"{not json")
    assert bad.status_code == 400
    assert set(bad.json()) == {"error"}
    missing = http.post("/api/generate", json={"prompt": "hi"})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    empty = http.post("/api/chat")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    embed_chat = http.post("/api/chat", json={"model": "nomic-embed-text", "messages": USER})
    assert embed_chat.status_code == 400
    assert "does not support chat" in embed_chat.json()["error"]
    nowhere = http.get("/api/nowhere")
    assert (nowhere.status_code, nowhere.text) == (404, "404 page not found")
    assert nowhere.headers["content-type"] == "text/plain; charset=utf-8"
    assert http.get("/api/chat").status_code == 405


@pytest.mark.parametrize("images", [True, 5, "aW1n", {"a": 1}, ["aW1n"]])
def test_a_chat_reads_no_images_beside_its_messages(http: httpx.Client, images: object) -> None:
    """Ollama's ChatRequest has no top-level ``images`` (a message carries its own): Go's
    decoder skips the field, whatever it holds. The emulator's handler raised on it, and the
    connection dropped: a gateway in front answered 502 for a call Ollama answers."""
    body = {"model": "llama3.1:8b", "stream": False, "messages": USER, "images": images}
    reply = http.post("/api/chat", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


def test_unreachable_url_refuses_connections() -> None:
    with ollama.Client(host=unreachable_url(), timeout=2) as c, pytest.raises(ConnectionError):
        c.list()


# --- faults ------------------------------------------------------------------


def test_midstream_error_after_some_chunks(client: ollama.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.MIDSTREAM_ERROR, after_tokens=2)
    seen: list[str] = []
    stream = client.chat(model="llama3.1:8b", messages=USER, stream=True)
    with pytest.raises(ollama.ResponseError) as info:
        drain(stream, seen)
    assert seen == list(expected_reply("llama3.1:8b", USER).pieces[:2])
    assert info.value.status_code == -1  # an error line inside a 200 stream

    emu.inject(Fault.MIDSTREAM_ERROR)
    with pytest.raises(ollama.ResponseError) as whole:
        client.chat(model="llama3.1:8b", messages=USER)
    assert whole.value.status_code == 500
    assert client.chat(model="llama3.1:8b", messages=USER).done


def test_midstream_error_wire_ends_cleanly(http: httpx.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.MIDSTREAM_ERROR, after_tokens=1)
    lines = ndjson(http.post("/api/generate", json={"model": "qwen2.5:7b", "prompt": "hi"}))
    assert len(lines) == 2
    assert set(lines[-1]) == {"error"}


def test_drop_breaks_the_stream(client: ollama.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.DROP, after_tokens=3)
    seen: list[str] = []
    stream = client.chat(model="llama3.1:8b", messages=USER, stream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        drain(stream, seen)
    assert len(seen) == 3

    emu.inject(Fault.DROP)
    with pytest.raises(httpx.RemoteProtocolError):
        client.generate(model="llama3.1:8b", prompt="hi")
    assert client.chat(model="llama3.1:8b", messages=USER).done  # the server lives on


def test_flaky_503_then_success(client: ollama.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.HTTP_503, times=2)
    assert emu.pending_faults == 2
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="llama3.1:8b", messages=USER)
        assert info.value.status_code == 503
    assert client.chat(model="llama3.1:8b", messages=USER).done
    assert emu.pending_faults == 0


def test_http_500_and_model_filter(client: ollama.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.HTTP_500, model="mistral")  # untagged: mistral:latest, never requested
    emu.inject(Fault.HTTP_500, model="qwen2.5:7b")
    assert client.chat(model="llama3.1:8b", messages=USER).done
    with pytest.raises(ollama.ResponseError) as info:
        list(client.chat(model="qwen2.5:7b", messages=USER, stream=True))
    assert info.value.status_code == 500
    assert info.value.error
    assert emu.pending_faults == 1


def test_omit_counts(http: httpx.Client, emu: OllamaEmulator) -> None:
    emu.inject(Fault.OMIT_COUNTS, times=2)
    final = ndjson(http.post("/api/chat", json={"model": "llama3.1:8b", "messages": USER}))[-1]
    assert final["done"]
    assert "prompt_eval_count" not in final
    assert "eval_count" not in final
    assert final["eval_duration"] > 0
    whole = http.post("/api/chat", json={"model": "llama3.1:8b", "messages": USER, "stream": False})
    assert "eval_count" not in whole.json()
    assert whole.json()["message"]["content"]


def test_hang_until_stop() -> None:
    emu = OllamaEmulator().start()
    emu.inject(Fault.HANG)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            with ollama.Client(host=emu.url, timeout=10) as c:
                c.chat(model="llama3.1:8b", messages=USER)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while not emu.requests:  # a busy machine may take a while to deliver it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert caller.is_alive() and len(emu.requests) == 1
    emu.stop()  # the hang ends with the emulator, well before the client's 10 s timeout
    caller.join(timeout=8)
    assert not caller.is_alive()
    assert isinstance(outcome[0], httpx.HTTPError)


def test_hang_ends_when_client_gives_up(emu: OllamaEmulator, http: httpx.Client) -> None:
    emu.inject(Fault.HANG)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/api/chat", json={"model": "llama3.1:8b", "messages": USER}, timeout=0.2)
    assert http.get("/").text == "Ollama is running"


# --- OpenAI compatibility ----------------------------------------------------


def test_openai_non_stream_usage(http: httpx.Client) -> None:
    body = {"model": "qwen2.5:7b", "messages": USER, "max_tokens": 4}
    completion = http.post("/v1/chat/completions", json=body).json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_stream(http: httpx.Client, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": "qwen2.5:7b", "messages": USER, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    expected = expected_reply("qwen2.5:7b", USER)
    content = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == expected.content
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == expected.output_tokens
        assert len(content) == expected.output_tokens + 1
    else:
        assert all("usage" not in c for c in chunks)


def test_openai_completions_whole_and_streamed(http: httpx.Client) -> None:
    expected = expected_reply("qwen2.5:7b", prompt="why is the sky blue")
    body: dict[str, Any] = {"model": "qwen2.5:7b", "prompt": "why is the sky blue"}
    whole = http.post("/v1/completions", json=body).json()
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
    assert whole["choices"] == [{"text": expected.content, "index": 0, "finish_reason": "stop"}]
    assert whole["usage"]["completion_tokens"] == expected.output_tokens
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    events = sse(http.post("/v1/completions", json=body))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    # Ollama's CompletionChunk: choices come before model
    assert list(chunks[0]) == [
        *("id", "object", "created", "choices", "model", "system_fingerprint", "usage")
    ]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert "".join(texts) == expected.content
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    wrong = http.post("/v1/completions", json={"model": "qwen2.5:7b", "prompt": ["a"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_openai_errors_and_models(http: httpx.Client, emu: OllamaEmulator) -> None:
    missing = http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "model 'gpt-4' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    empty = http.post("/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": []})
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "invalid_request_error"
    emu.inject(Fault.HTTP_503)
    busy = http.post("/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": USER})
    assert busy.status_code == 503
    assert busy.json()["error"]["type"] == "api_error"
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [m.name for m in DEFAULT_MODELS]


# --- embeddings and metadata -------------------------------------------------


def test_embed(client: ollama.Client) -> None:
    result = client.embed(model="nomic-embed-text:latest", input=["one two", "three"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == 768
    assert math.isclose(sum(v * v for v in result.embeddings[0]), 1.0, rel_tol=1e-4)
    assert list(result.embeddings[1]) == expected_embedding("nomic-embed-text:latest", "three")
    assert result.prompt_eval_count == 3
    assert result.load_duration == 750_000
    single = client.embed(model="nomic-embed-text:latest", input="three")
    assert single.embeddings[0] == result.embeddings[1]
    assert single.load_duration == WARM_LOAD_NS


def test_tags_ps_show_version(client: ollama.Client, http: httpx.Client) -> None:
    tags = client.list()
    assert [m.model for m in tags.models] == [m.name for m in DEFAULT_MODELS]
    assert tags.models[0].details
    assert tags.models[0].details.parameter_size == "8.0B"
    assert client.ps().models == []
    client.chat(model="mistral:7b", messages=USER)
    running = client.ps().models
    assert [m.model for m in running] == ["mistral:7b"]
    assert running[0].expires_at
    shown = client.show("nomic-embed-text")
    assert shown.capabilities == ["embedding"]
    assert shown.details
    assert shown.details.family == "nomic-bert"
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope:1b")
    assert info.value.status_code == 404
    assert http.get("/api/version").json() == {"version": OLLAMA_VERSION}
    assert http.get("/").text == "Ollama is running"
    head = http.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "17"


def test_requests_are_recorded(client: ollama.Client, emu: OllamaEmulator) -> None:
    assert emu.requests == []
    client.chat(model="llama3.1:8b", messages=USER, options={"temperature": 0})
    (request,) = emu.requests
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert request.body["options"] == {"temperature": 0}
    assert request.headers["content-type"] == "application/json"
    assert emu.requests_to("/api/chat") == [request]
    emu.reset()
    assert emu.requests == []


def test_latency_is_real_wall_time(emu: OllamaEmulator, client: ollama.Client) -> None:
    emu.latency, emu.token_latency = 0.05, 0.01
    started = time.monotonic()
    parts = list(
        client.chat(model="llama3.1:8b", messages=USER, stream=True, options={"num_predict": 5})
    )
    assert len(parts) == 6
    assert time.monotonic() - started >= 0.05 + 5 * 0.01


def test_restart_on_the_same_port() -> None:
    emu = OllamaEmulator().start()
    url = emu.url
    emu.stop()
    with ollama.Client(host=url, timeout=2) as c:
        with pytest.raises(ConnectionError):
            c.list()
        with emu:
            assert emu.url == url
            assert c.list().models


def test_module_runs_from_the_command_line() -> None:
    command = [sys.executable, "-m", "ollama_meter.testing", "--port", "0", "--latency", "0"]
    command.append("--real-time")
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(url, timeout=5).text == "Ollama is running"
            with ollama.Client(host=url, timeout=10) as c:
                sent = time.monotonic_ns()
                reply = c.chat(model="llama3.1:8b", messages=USER)
                took = time.monotonic_ns() - sent
            assert reply.message.content == expected_reply("llama3.1:8b", USER).content
            # At a GPU's pace when told --real-time: a cold load of 1.2 s, spent for real.
            assert reply.load_duration == 1_200_000_000
            assert reply.total_duration is not None and reply.total_duration <= took
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert proc.stderr is not None
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("stream", [True, False])
def test_a_paced_pull_says_what_an_unpaced_one_says_once_hurried(
    emu: OllamaEmulator, http: httpx.Client, stream: bool
) -> None:
    """``progress_latency`` holds a pull between its progress lines (its first line out at
    once), changing none of them; ``hurry()`` lets it finish."""
    body = {"model": "qwen3:8b", "stream": stream}
    unpaced = http.post("/api/pull", json=body).content
    emu.reset()
    emu.progress_latency = 600.0
    lines: list[bytes] = []
    first = threading.Event()

    def pull() -> None:
        with (
            httpx.Client(base_url=emu.url, timeout=60) as own,
            own.stream("POST", "/api/pull", json=body) as answer,
        ):
            for line in answer.iter_lines():
                lines.append(line.encode() + b"\n")
                first.set()

    puller = threading.Thread(target=pull, daemon=True)
    puller.start()
    if stream:
        assert first.wait(30), "the first line waited"
        assert lines == unpaced.splitlines(keepends=True)[:1]
    else:
        deadline = time.monotonic() + 30
        while not emu.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lines == []
    emu.hurry()
    puller.join(30)
    assert not puller.is_alive()
    assert b"".join(lines) == unpaced + (b"" if stream else b"\n")
    assert emu.progress_latency == 0.0


def test_the_command_line_serves_a_subset_of_the_models() -> None:
    command = [sys.executable, "-m", "ollama_meter.testing", "--port", "0"]
    with subprocess.Popen(
        [*command, "--models", "qwen2.5:7b, nomic-embed-text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            with ollama.Client(host=url, timeout=5) as c:
                assert [m.model for m in c.list().models] == [
                    "qwen2.5:7b",
                    "nomic-embed-text:latest",
                ]
                with pytest.raises(ollama.ResponseError) as missing:
                    c.chat(model="llama3.1:8b", messages=USER)
                assert c.chat(model="qwen2.5:7b", messages=USER).load_duration == 2_750_000  # fast
            assert missing.value.status_code == 404
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    wrong = subprocess.run(
        [*command, "--models", "gpt-4"], check=False, capture_output=True, text=True, timeout=30
    )
    assert wrong.returncode == 2
    assert "--models: 'gpt-4' is not an emulated model; choose from llama3.1:8b" in wrong.stderr


def test_it_counts_the_most_inference_requests_answered_at_once() -> None:
    with OllamaEmulator(token_latency=0.1) as emu:
        assert (emu.in_flight, emu.most_in_flight) == (0, 0)
        client = ollama.Client(host=emu.url)
        started = threading.Barrier(4)

        def call() -> None:
            started.wait()
            client.chat(model="llama3.1:8b", messages=USER)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        started.wait()
        for thread in threads:
            thread.join()
        client.list()  # not inference: not counted
        assert emu.in_flight == 0
        assert emu.most_in_flight == 3
        emu.reset()
        assert emu.most_in_flight == 0


def test_a_call_answered_is_out_of_flight_before_its_client_has_the_answer() -> None:
    """A client holding a whole answer may send its next call at once (a gateway handing a
    slot on): the server must not count the two at once. The call is counted out before its
    answer's last bytes leave."""
    with OllamaEmulator() as emu:
        client = ollama.Client(host=emu.url)
        for stream in (False, True) * 100:
            reply = client.chat(model="llama3.1:8b", messages=USER, stream=stream)
            if stream:
                *_, last = reply
                assert last.done
            assert emu.in_flight == 0
            client.generate(model="llama3.1:8b", prompt="hi", stream=False)
            assert emu.in_flight == 0
        assert emu.most_in_flight == 1


def test_a_paced_stream_is_whole_in_a_process_holding_over_a_thousand_files() -> None:
    """Checking for a client that left used select(), which refuses a descriptor past 1,023:
    in a long test run's process every paced reply broke off mid-stream (incomplete chunked
    read) and printed a traceback into whatever command was running."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with OllamaEmulator(token_latency=0.01) as emu:
            parts = list(
                ollama.Client(host=emu.url).chat(
                    model="llama3.1:8b", messages=USER, stream=True, options={"num_predict": 3}
                )
            )
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [p.done for p in parts] == [False] * 3 + [True]


def test_hurry_lets_replies_under_way_finish_at_once(emu: OllamaEmulator) -> None:
    """A whole reply's one long pause and a stream's per-token pauses both end: tests that
    needed calls to run a while do not wait their replies out."""
    emu.latency = 600.0  # a reply that would take ten minutes
    done: list[object] = []
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}

    def call(stream: bool) -> None:
        with httpx.Client(base_url=emu.url, timeout=60) as c:
            done.append(c.post("/api/chat", json={**body, "stream": stream}).status_code)

    threads = [threading.Thread(target=call, args=(s,)) for s in (False, True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while emu.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    emu.hurry()
    for thread in threads:
        thread.join(timeout=30)
    assert done == [200, 200]
    assert emu.latency == emu.token_latency == 0.0


def test_responses_api_wire_format(http: httpx.Client) -> None:
    """``/v1/responses`` as Ollama writes it: a whole answer in its struct's field order; a
    stream of ``event:``/``data:`` pairs whose data keys are sorted (Go maps), numbered in
    order, ending with ``response.completed`` and its usage, with no ``[DONE]``."""
    body = {"model": "llama3.1:8b", "instructions": "be brief", "input": USER[0]["content"]}
    expected = expected_reply("llama3.1:8b", [{"content": "be brief"}, *USER])
    whole = http.post("/v1/responses", json=body)
    assert whole.text.endswith("}\n")
    answer = whole.json()
    assert list(answer)[:7] == [
        "id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
    ]  # fmt: skip
    assert answer["output"][0]["content"][0]["text"] == expected.content
    assert answer["usage"]["input_tokens"] == expected.prompt_tokens
    assert answer["usage"]["output_tokens"] == expected.output_tokens
    assert (answer["temperature"], answer["top_p"]) == (1, 1)  # as Go writes a float64 1.0
    streamed = http.post("/v1/responses", json={**body, "stream": True})
    assert streamed.headers["content-type"] == "text/event-stream"
    events = [event.split("\n") for event in streamed.text.split("\n\n") if event]
    assert all(len(lines) == 2 and lines[0].startswith("event: ") for lines in events)
    kinds = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert all(list(d) == sorted(d) for d in data)
    assert [d["type"] for d in data] == kinds
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas == expected.output_tokens
    usage = data[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        expected.prompt_tokens,
        expected.output_tokens,
    )


def test_messages_api_wire_format(http: httpx.Client) -> None:
    """``/v1/messages`` as Ollama writes it: a whole message in its struct's field order; a
    stream of ``event:``/``data:`` pairs, ``message_start`` with an input count guessed
    from the request's length, the counts taken in ``message_delta``, ``message_stop``
    last, no ``[DONE]``; its refusals as Anthropic's error objects."""
    body = {"model": "llama3.1:8b", "max_tokens": 100, "system": "be brief", "messages": USER}
    expected = expected_reply("llama3.1:8b", [{"content": "be brief"}, *USER])
    answer = http.post("/v1/messages", json=body).json()
    assert list(answer) == ["id", "type", "role", "model", "content", "stop_reason", "usage"]
    assert answer["content"] == [{"type": "text", "text": expected.content}]
    assert answer["usage"] == {
        "input_tokens": expected.prompt_tokens,
        "output_tokens": expected.output_tokens,
    }
    streamed = http.post("/v1/messages", json={**body, "stream": True})
    assert streamed.headers["content-type"] == "text/event-stream"
    events = [event.split("\n") for event in streamed.text.split("\n\n") if event]
    assert all(len(lines) == 2 and lines[0].startswith("event: ") for lines in events)
    kinds = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert [d["type"] for d in data] == kinds
    deltas = kinds.count("content_block_delta")
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas == expected.output_tokens
    guessed = (len("be brief") + len(USER[0]["content"])) // 4
    assert data[0]["message"]["usage"] == {"input_tokens": guessed, "output_tokens": 0}
    assert data[-2]["usage"] == {
        "input_tokens": expected.prompt_tokens,
        "output_tokens": expected.output_tokens,
    }
    refused = http.post("/v1/messages", json={"model": "llama3.1:8b", "messages": USER})
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "max_tokens is required and must be positive",
            },
        },
    )


# --- keep_alive, read as Ollama's Go Duration ----------------------------------------


@pytest.mark.parametrize(
    "keep_alive", [0, 0.0, 1e-10, "0", "0s", "0h", "0ms", "0.0s", "+0s", "-0s", "0m0s", "0µs"]
)
def test_a_zero_keep_alive_in_any_spelling_go_reads_unloads(
    http: httpx.Client, emu: OllamaEmulator, keep_alive: Any
) -> None:
    """Ollama reads ``keep_alive`` as seconds (a number) or with Go's ``time.ParseDuration``
    (a string): each of these is a zero duration, so an empty prompt unloads the model."""
    http.post("/api/generate", json={"model": "mistral:7b"})
    assert emu.is_loaded("mistral:7b")
    body = {"model": "mistral:7b", "keep_alive": keep_alive}
    assert http.post("/api/generate", json=body).json()["done_reason"] == "unload"
    assert not emu.is_loaded("mistral:7b")
    chat = {"model": "mistral:7b", "messages": [], "keep_alive": keep_alive}
    assert http.post("/api/chat", json=chat).json()["done_reason"] == "unload"


@pytest.mark.parametrize("keep_alive", [None, -1, 300, 0.5, "5m", "-1s", "1h30m", "1.5h", ".5s"])
def test_a_keep_alive_that_is_not_zero_only_loads(http: httpx.Client, keep_alive: Any) -> None:
    body = {"model": "mistral:7b", "keep_alive": keep_alive}
    assert http.post("/api/generate", json=body).json()["done_reason"] == "load"


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("5", 'time: missing unit in duration "5"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("five minutes", 'time: invalid duration "five minutes"'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        (True, "Unsupported type: 'bool'"),
        ({"minutes": 5}, "Unsupported type: 'map[string]interface {}'"),
        ([5], "Unsupported type: '[]interface {}'"),
    ],
)
def test_a_keep_alive_go_cannot_read_is_a_400_with_gos_words(
    http: httpx.Client, emu: OllamaEmulator, keep_alive: Any, error: str
) -> None:
    for path, body in (
        ("/api/generate", {"model": "mistral:7b", "prompt": "hi"}),
        ("/api/chat", {"model": "mistral:7b", "messages": USER}),
        ("/api/embed", {"model": "nomic-embed-text", "input": "hi"}),
    ):
        answer = http.post(path, json={**body, "keep_alive": keep_alive})
        assert (answer.status_code, answer.json()) == (400, {"error": error})
    assert not emu.is_loaded("mistral:7b")


# --- /api/embed: dimensions and truncate ---------------------------------------------


@pytest.mark.parametrize("dimensions", [1, 4, 767])
def test_embed_dimensions_cuts_each_vector_and_makes_it_unit_length_again(
    client: ollama.Client, dimensions: int
) -> None:
    """Ollama keeps a vector's first ``dimensions`` values and normalises them again."""
    result = client.embed(
        model="nomic-embed-text", input=["one two", "three"], dimensions=dimensions
    )
    for vector, text in zip(result.embeddings, ["one two", "three"], strict=True):
        assert len(vector) == dimensions
        assert list(vector) == expected_embedding("nomic-embed-text", text, dimensions=dimensions)
        assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert result.prompt_eval_count == 3
    full = client.embed(model="nomic-embed-text", input="three", dimensions=0).embeddings[0]
    assert (
        len(full)
        == 768
        == len(client.embed(model="nomic-embed-text", input="three", dimensions=5000).embeddings[0])
    )


def test_embed_truncates_an_input_past_the_context_unless_told_not_to(
    client: ollama.Client, http: httpx.Client
) -> None:
    """An input longer than the model's context is cut to it (and counted as cut), or with
    ``truncate: false`` refused with Ollama's 400."""
    context = next(m for m in DEFAULT_MODELS if m.name == "nomic-embed-text:latest").context_length
    words = [f"w{i}" for i in range(context + 10)]
    long = " ".join(words)
    cut = client.embed(model="nomic-embed-text", input=[long, "short one"])
    assert cut.prompt_eval_count == context + 2
    assert list(cut.embeddings[0]) == expected_embedding(
        "nomic-embed-text", " ".join(words[:context])
    )
    body = {"model": "nomic-embed-text", "input": [long], "truncate": False}
    refused = http.post("/api/embed", json=body)
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    fits = http.post("/api/embed", json={**body, "input": ["short one"]})
    assert fits.json()["prompt_eval_count"] == 2


def test_a_models_own_system_prompt_is_shown_and_sent_as_ollama_sends_it() -> None:
    """A Modelfile SYSTEM: ``/api/show`` says it; a chat without a system message of its own
    and a generate without ``system`` (not ``raw``) count it; the others do not."""
    system = "you are terse and kind"  # 5 words: 5 tokens to the emulator
    model = replace(DEFAULT_MODELS[0], system=system)
    with OllamaEmulator(models=[model, DEFAULT_MODELS[1]]) as emu:
        client = ollama.Client(host=emu.url)
        # The ollama client's ShowResponse has no field for it; Ollama's (api/types.go) has.
        shown = httpx.post(f"{emu.url}/api/show", json={"model": model.name}).json()
        assert shown["system"] == system
        assert f'SYSTEM """{system}"""' in shown["modelfile"]
        plain = httpx.post(f"{emu.url}/api/show", json={"model": DEFAULT_MODELS[1].name}).json()
        assert "system" not in plain and "SYSTEM" not in plain["modelfile"]  # omitted when empty
        say = {"role": "user", "content": "hi there"}
        counts = [
            client.chat(model=model.name, messages=[say]).prompt_eval_count,
            client.chat(
                model=model.name, messages=[{"role": "system", "content": "be brief"}, say]
            ).prompt_eval_count,
            client.generate(model=model.name, prompt="hi there").prompt_eval_count,
            client.generate(model=model.name, prompt="hi there", system="brief").prompt_eval_count,
            client.generate(model=model.name, prompt="hi there", raw=True).prompt_eval_count,
        ]
        assert counts == [7, 4, 7, 3, 2]
        assert [r.path for r in emu.calls] == ["/api/chat"] * 2 + ["/api/generate"] * 3
