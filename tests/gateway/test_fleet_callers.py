"""A department's own circuit on one of several servers: its calls go to the others.

Routing asked only whether the model's circuit was open on a server, not the caller's own:
with sales' own circuit open on one server, a call of sales' was sent to the other without
its retries (another server "could take it"), and its first 500 there moved it to the
server that refuses sales: a 503 for a call one retry would have answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_meter.errors import UpstreamServerError
from ollama_meter.records import model_key
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream import CircuitBreaker, breaker_for
from tests.gateway.conftest import Gateway
from tests.gateway.test_fleet import LLAMA, prompts, spans

BOOM = UpstreamServerError("boom", status_code=500)
SALES = "default/sales"
ROUTES = [
    ("/api/chat", {"model": LLAMA, "stream": False, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", {"model": LLAMA, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
]  # fmt: skip


@pytest.fixture
def two_servers(
    serve_on: Callable[..., Gateway],
    sqlite_url: str,
    emulators: Callable[..., OllamaEmulator],
) -> tuple[Gateway, OllamaEmulator, OllamaEmulator]:
    one, two = emulators(LLAMA), emulators(LLAMA)
    for url in (one.url, two.url):  # made first: the gateway's breakers keep time by ``_clock``
        breaker_for(url, threshold=3, reset_after=60.0, clock=_clock)
    config: dict[str, Any] = {"upstreams": f"{one.url},{two.url}", "retry_backoff": 0.0}
    return serve_on(one.url, sqlite_url, config=config), one, two


def _clock() -> float:
    return 1000.0  # time stands still: every wait is exact


def _open_for_sales(url: str, ago: float = 0.0) -> CircuitBreaker:
    """Sales' own circuit for the model opened on ``url`` ``ago`` seconds ago: three of its
    calls failed there."""
    breaker = breaker_for(url, threshold=3, reset_after=60.0)
    for _ in range(3):
        breaker.settle(breaker.admit(model_key(LLAMA), SALES), BOOM)
    assert breaker.state(model_key(LLAMA), SALES) == "open"
    assert breaker.state(model_key(LLAMA)) == "closed"
    for circuit in breaker._callers.values():
        assert circuit.opened_at is not None
        circuit.opened_at -= ago
    return breaker


def _post(gw: Gateway, path: str, body: dict[str, Any], department: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{path}", json=body, headers={"X-Ometer-Department": department}, timeout=60
    )


def test_a_departments_calls_go_where_its_own_circuit_is_closed_with_their_retries(
    two_servers: tuple[Gateway, OllamaEmulator, OllamaEmulator],
) -> None:
    gw, one, two = two_servers
    _open_for_sales(two.url)
    one.inject(Fault.HTTP_500, times=1)  # one's first answer fails; a retry there answers
    path, body = ROUTES[0]
    for _ in range(3):
        reply = _post(gw, path, body, "sales")
        assert reply.status_code == 200, reply.text[:300]
    assert len(prompts(two)) == 0  # never sent where sales is refused
    assert len(one.requests_to("/api/chat")) == 4  # the 500, its retry, two more
    done = spans(gw.ledger)
    assert [(s.status, s.upstream_host, s.http_status) for s in done] == [("ok", one.url, 200)] * 3
    assert _post(gw, path, body, "support").status_code == 200  # support's are not held


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_open_for_a_department_on_every_server_is_503_with_the_soonest_retry_after(
    two_servers: tuple[Gateway, OllamaEmulator, OllamaEmulator], path: str, body: dict[str, Any]
) -> None:
    gw, one, two = two_servers
    _open_for_sales(two.url)
    _open_for_sales(one.url, ago=50.0)  # it lets a trial through 50 s sooner than two
    reply = _post(gw, path, body, "sales")
    assert reply.status_code == 503, reply.text[:300]
    assert reply.headers["retry-after"] == "10"  # one's wait, not two's 60 s
    text = reply.text
    assert "called by default/sales" in text and "other callers of the model" in text
    if path == "/api/chat":
        assert set(reply.json()) == {"error"}
    elif path == "/v1/messages":
        assert reply.json()["type"] == "error"
    else:
        assert reply.json()["error"]["message"]
    assert not one.requests_to(path) and not two.requests_to(path)
    [span] = spans(gw.ledger)
    assert (span.status, span.error_type, span.http_status) == ("error", "circuit_open", 503)
    assert span.upstream_host == one.url and one.url in text  # the circuit it was told of
    assert _post(gw, path, body, "support").status_code == 200
    health = httpx.get(f"{gw.url}/healthz").json()
    assert [s["state"] for s in health["servers"]] == ["up", "up"]
