"""``/healthz`` is open to anyone on a guarded gateway, and says what is up, not where.

A load balancer needs ok or not; with several Ollama servers it listed each one's URL to
anyone who could reach the port, keys required or not: the addresses of the Ollama servers
behind the gateway (which, reached directly, are called unmetered, with no key). Each
server's state is still listed, in ``--upstream`` order; the admin token's ``/api/dash``
names them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "admin-s3cret"


@pytest.mark.parametrize(
    "guard",
    [{"require_key": True}, {"admin_token": TOKEN}, {"require_key": True, "admin_token": TOKEN}],
)
def test_a_guarded_gateways_health_names_no_server(
    app_on: Callable[..., Gateway],
    emulators: Callable[..., OllamaEmulator],
    sqlite_url: str,
    guard: dict[str, object],
) -> None:
    one, two = emulators("llama3.1:8b"), emulators("mistral:7b")
    two.stop()
    gw = app_on(one.url, sqlite_url, config={"upstreams": f"{one.url},{two.url}"}, **guard)
    health = gw.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok", "ledger": "ok", "upstream": "ok",
        "servers": [{"state": "up"}, {"state": "down"}],
    }  # fmt: skip
    for url in (one.url, two.url):
        assert url.removeprefix("http://") not in health.text
    if "admin_token" in guard:
        dash = gw.client.get("/api/dash", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert [s["url"] for s in dash["servers"]] == [one.url, two.url]


def test_an_open_gateways_health_names_its_servers(
    app_on: Callable[..., Gateway], emulators: Callable[..., OllamaEmulator], sqlite_url: str
) -> None:
    one, two = emulators("llama3.1:8b"), emulators("mistral:7b")
    gw = app_on(one.url, sqlite_url, config={"upstreams": f"{one.url},{two.url}"})
    servers = gw.client.get("/healthz").json()["servers"]
    assert [(s["url"], s["state"]) for s in servers] == [(one.url, "up"), (two.url, "up")]
