"""A metered call found by its path (``_dispatch.Direct``) is answered as Starlette's router
would have answered it: the same request, sent once each way to one gateway, gets the same
status, headers and error; a refusal is counted under the same route."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.gateway._dispatch import Direct
from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

METERED = sorted({*OLLAMA_ROUTES, *OPENAI_ROUTES})
MODEL = "llama3.1:8b"
BODIES = [
    b"",
    b"not json",
    b"{}",
    b"[1, 2]",
    json.dumps({"model": MODEL}).encode(),
    json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    json.dumps({"model": MODEL, "prompt": "hi", "stream": False}).encode(),
    json.dumps({"model": MODEL, "input": "hi", "stream": True}).encode(),
    json.dumps({"model": "no-such-model", "prompt": "hi"}).encode(),
    json.dumps({"model": MODEL, "max_tokens": 10, "messages": []}).encode(),
]
HEADERS = [
    {},
    {"content-type": "application/json"},
    {"origin": "http://localhost:3000"},
    {"origin": "https://evil.example"},
    {"host": "evil.example"},
    {"x-ometer-department": "research", "x-ometer-tenant": "acme"},
    {"x-ometer-department": ""},
    {"content-encoding": "gzip"},
    {"authorization": "Bearer not-a-key"},
]
VARYING = {"date", "x-ometer-span", "x-ometer-span-id", "content-length"}
"""What two answers to the same call differ in: when, and their spans' names."""


def direct(gw: Gateway) -> Direct:
    """The app's dispatcher (its middleware stack built by the first request)."""
    gw.client.get("/healthz")
    layer: Any = gw.client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, Direct):
        layer = layer.app
    return layer


def answered(gw: Gateway, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    reply = gw.client.request(method, path, content=body, headers=headers)
    # An answer (JSON, lines of it, or server-sent events) says when it was made: its type is
    # in the headers; an error is compared whole.
    shown = None if reply.status_code == 200 else reply.content
    named = {k: v for k, v in reply.headers.items() if k not in VARYING}
    return reply.status_code, named, shown


def each_way(gw: Gateway, call: Callable[[], Any]) -> tuple[Any, Any]:
    """``call``'s result with metered paths found directly, then through the router."""
    dispatch = direct(gw)
    routes = dispatch.routes
    assert set(routes) == set(METERED)
    first = call()
    dispatch.routes = {}
    try:
        return first, call()
    finally:
        dispatch.routes = routes


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(METERED).flatmap(lambda p: st.sampled_from([p, p + "/", p.upper()])),
    method=st.sampled_from(["POST", "POST", "GET", "PUT", "HEAD", "OPTIONS"]),
    body=st.sampled_from(BODIES),
    headers=st.sampled_from(HEADERS),
)
def test_answered_as_routed(
    app_gateway: Gateway, path: str, method: str, body: bytes, headers: dict[str, str]
) -> None:
    fast, routed = each_way(app_gateway, lambda: answered(app_gateway, method, path, body, headers))
    assert fast == routed


def test_refusals_counted_by_route(app: Callable[..., Gateway], emulator: OllamaEmulator) -> None:
    gw = app(emulator.url, require_key=True)
    counts = gw.client.app_state["gateway"].access.unauthenticated.by_route  # type: ignore[attr-defined]

    def refused() -> dict[str, int]:
        before = dict(counts)
        for path in METERED:
            assert gw.client.post(path, json={"model": MODEL}).status_code == 401
        return {route: counts[route] - before.get(route, 0) for route in counts}

    fast, routed = each_way(gw, refused)
    assert fast == routed == dict.fromkeys(METERED, 1)
