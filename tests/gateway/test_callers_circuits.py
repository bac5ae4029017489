"""One department's run of failures opens a circuit for its own calls, not for everyone's.

A request can make Ollama fail in ways no classifier knows yet as the caller's own (a 500 in
new words for a bad request): counted against the model, three of one department's calls
opened the model's circuit, and every other department got 503 for a minute from a healthy
server. A run of one caller's failures now opens that caller's circuit for the model; the
model's opens when the failures come from two callers or more (a model that is broken).
"""

from __future__ import annotations

from collections.abc import Callable

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

HI = {"model": "llama3.1:8b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


def _from(department: str) -> dict[str, str]:
    return {"X-Ometer-Department": department}


def test_one_departments_failures_refuse_its_own_calls_and_no_one_elses(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    emulator.inject(Fault.HTTP_500, times=100)  # every attempt of sales' calls fails
    for _ in range(3):  # the circuits' threshold
        assert gw.client.post("/api/chat", json=HI, headers=_from("sales")).status_code == 500
    sent = len(emulator.requests_to("/api/chat"))
    emulator.clear_faults()
    refused = gw.client.post("/api/chat", json=HI, headers=_from("sales"))
    assert refused.status_code == 503
    assert "called by default/sales, failed 3 calls in a row" in refused.json()["error"]
    assert "other callers of the model are not affected" in refused.json()["error"]
    assert len(emulator.requests_to("/api/chat")) == sent  # not sent
    answered = gw.client.post("/api/chat", json=HI, headers=_from("support"))
    assert answered.status_code == 200, answered.text[:300]
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.department, s.status, s.error_type, s.http_status) for s in spans] == [
        ("support", "ok", None, 200),
        ("sales", "error", "circuit_open", 503),
    ] + [("sales", "error", "upstream_5xx", 500)] * 3


def test_failures_from_two_departments_open_the_models_circuit_for_everyone(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    emulator.inject(Fault.HTTP_500, times=100)  # the model is broken
    for department in ("sales", "support", "sales"):
        reply = gw.client.post("/api/chat", json=HI, headers=_from(department))
        assert reply.status_code == 500
    emulator.clear_faults()
    refused = gw.client.post("/api/chat", json=HI, headers=_from("legal"))
    assert refused.status_code == 503
    assert "model 'llama3.1:8b' on" in refused.json()["error"]
    assert "failed 3 calls in a row" in refused.json()["error"]


def test_under_require_key_headers_do_not_make_one_key_many_callers(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """With keys required the key says whose call it is: a caller that names another
    department, tenant or user in each request is still one caller, and its failures open
    its own circuit, never the model's for every other key."""
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    sales = gw.ledger.create_key(name="s", tenant="acme", department="sales")[1]
    support = gw.ledger.create_key(name="t", tenant="acme", department="support")[1]
    emulator.inject(Fault.HTTP_500, times=100)
    disguises = [
        {"X-Ometer-Department": "legal"},
        {"X-Ometer-Tenant": "globex", "X-Ometer-Department": "ops"},
        {"X-Ometer-User": "mallory", "X-Ometer-Department": "hr"},
    ]
    for disguise in disguises:
        reply = gw.client.post("/api/chat", json=HI, headers={"X-Ometer-Key": sales, **disguise})
        assert reply.status_code == 500
    emulator.clear_faults()
    refused = gw.client.post("/api/chat", json=HI, headers={"X-Ometer-Key": sales, **disguises[0]})
    assert refused.status_code == 503
    assert "called by acme/sales, failed 3 calls in a row" in refused.json()["error"]
    answered = gw.client.post("/api/chat", json=HI, headers={"X-Ometer-Key": support})
    assert answered.status_code == 200, answered.text[:300]
