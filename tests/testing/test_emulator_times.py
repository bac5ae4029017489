"""The emulator reports no time it did not spend: Ollama times its work inside the request.

So no figure it reports, nor load, prompt evaluation and generation together, is longer than
the call a client timed around it, and a streamed chunk leaves no sooner than the work before
it took; the meter cuts any figure past the call's latency (``tests/gateway/test_lying_upstream``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.testing import (
    DEFAULT_MODELS,
    REAL_TIME,
    REAL_TIME_MODELS,
    THINKING_MODEL,
    OllamaEmulator,
    expected_reply,
)

CHATTY = [m.name for m in (*DEFAULT_MODELS, THINKING_MODEL) if not m.embedding]
words = st.lists(st.sampled_from(["why", "is", "the", "sky", "blue", "today", "?"]), max_size=30)


@pytest.fixture(scope="module")
def emu() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(models=(*DEFAULT_MODELS, THINKING_MODEL)) as emu:
        yield emu


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    model=st.sampled_from(CHATTY),
    path=st.sampled_from(["/api/chat", "/api/generate"]),
    stream=st.booleans(),
    cold=st.booleans(),
    prompt=words,
    cap=st.none() | st.integers(0, 12),
)
def test_no_duration_is_longer_than_the_call_and_no_chunk_comes_before_its_work(
    emu: OllamaEmulator,
    model: str,
    path: str,
    stream: bool,
    cold: bool,
    prompt: list[str],
    cap: int | None,
) -> None:
    if cold:
        emu.reset()
    text = " ".join(prompt) or "hi"
    body: dict[str, object] = {"model": model, "stream": stream}
    body |= {"options": {"num_predict": cap}} if cap is not None else {}
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": text}]
        expected = expected_reply(model, body["messages"], body.get("options"))  # type: ignore[arg-type]
    else:
        body["prompt"] = text
        expected = expected_reply(model, prompt=text, options=body.get("options"))  # type: ignore[arg-type]
    was_cold = not emu.is_loaded(model)
    arrived: list[int] = []
    with httpx.Client(base_url=emu.url, timeout=10) as http:
        sent = time.monotonic_ns()
        with http.stream("POST", path, json=body) as response:
            lines = []
            for line in response.iter_lines():
                if line:
                    arrived.append(time.monotonic_ns() - sent)
                    lines.append(json.loads(line))
        took = time.monotonic_ns() - sent
    final = lines[-1]
    assert final["done"] is True
    parts = [final.get(f"{name}_duration", 0) for name in ("load", "prompt_eval", "eval")]
    assert parts[0] == expected.load_duration(cold=was_cold)
    assert sum(parts) <= final["total_duration"] <= arrived[-1] <= took
    assert final["total_duration"] == expected.total_duration(cold=was_cold)
    # Each chunk leaves once the model has worked as long as the figures say it had.
    assert len(arrived) == (len(expected.worked_ns(cold=was_cold)) if stream else 1)
    due = expected.worked_ns(cold=was_cold) if stream else [final["total_duration"]]
    assert all(at >= worked for at, worked in zip(arrived, due, strict=True)), (arrived, due)


def test_an_embedding_reports_no_more_time_than_it_took(emu: OllamaEmulator) -> None:
    emu.reset()
    with httpx.Client(base_url=emu.url, timeout=10) as http:
        for _ in range(2):  # cold, then warm
            sent = time.monotonic_ns()
            said = http.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b"})
            took = time.monotonic_ns() - sent
            figures = said.json()
            assert figures["load_duration"] <= figures["total_duration"] <= took


def test_the_models_at_real_time_are_a_gpus_pace() -> None:
    """What ``python -m ollama_meter.testing --real-time`` serves."""
    llama = REAL_TIME_MODELS[0]
    assert llama.name == "llama3.1:8b" and REAL_TIME == 400
    assert (llama.load_ns, llama.warm_load_ns) == (1_200_000_000, 2_000_000)
    assert (llama.prompt_ns_per_token, llama.eval_ns_per_token) == (1_000_000, 20_000_000)
    assert llama.overhead_ns == 500_000
    for fast, real in zip(DEFAULT_MODELS, REAL_TIME_MODELS, strict=True):
        assert real.load_ns == fast.load_ns * REAL_TIME
        assert real.eval_ns_per_token == fast.eval_ns_per_token * REAL_TIME
        assert fast.load_ns <= 3_000_000 and fast.eval_ns_per_token <= 50_000  # tests stay fast
