"""A call through the gateway leaves no reference cycle behind: what it made is freed as it
ends, not by Python's cyclic collector. Each request's uvicorn cycle (its scope, futures and
wrapped ``send``/``receive``), each stream's read-ahead (its end's traceback) and each refusal
from Ollama (its error's traceback) were cycles: 27 objects a call, and a collection of about
3 ms every 200 calls on the event loop."""

from __future__ import annotations

import gc
from collections import Counter

import httpx

from tests.gateway.conftest import Gateway

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
CALLS = (  # path, body, status
    ("/api/chat", {**CHAT, "stream": False}, 200),
    ("/api/chat", {**CHAT, "stream": True}, 200),
    ("/v1/chat/completions", {**CHAT, "stream": True}, 200),
    ("/api/chat", {**CHAT, "model": "made-up:1b"}, 404),  # Ollama's refusal, passed on
)
OURS = (
    "RequestResponseCycle", "BodyNews", "ReadAhead", "MeteredCall", "SpanRecord", "Task",
    "Refusal", "ModelNotFound",
)  # fmt: skip


def test_calls_leave_no_cycle(sqlite_gateway: Gateway) -> None:
    with httpx.Client(base_url=sqlite_gateway.url, timeout=30) as client:
        for path, body, status in CALLS:  # once to warm up
            assert client.post(path, json=body).status_code == status
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for path, body, status in CALLS * 2:
                assert client.post(path, json=body).status_code == status
            gc.collect()
            left = Counter(type(found).__name__ for found in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert {name: left[name] for name in OURS if left[name]} == {}
