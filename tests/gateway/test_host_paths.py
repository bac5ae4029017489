"""A ``Host`` header is a host, never part of the path: Starlette builds ``request.url`` from
it, and Starlette 1.0 to 1.x (``http://{Host}{path}``, parsed again) took ``gw/api/dash?`` as
a host and a path: a request for ``/metrics`` read as one for ``/api/dash``, and a tenant's
key opened every tenant's counters on a gateway started for the network (checked by hand
with Starlette 1.0.0, which ometer runs on)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway


@pytest.fixture
def keyed(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> tuple[Gateway, str]:
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    return gw, gw.ledger.create_key(name="k", tenant="acme", department="sales")[1]


def test_a_key_does_not_open_metrics_by_a_host_that_names_another_path(
    keyed: tuple[Gateway, str],
) -> None:
    gw, key = keyed
    auth = {"Authorization": f"Bearer {key}"}
    for host in ("gw/api/dash?", "gw/dashboard#", "gw:80/api/dash?x="):
        reply = gw.client.get("/metrics", headers={**auth, "Host": host})
        assert reply.status_code == 400, (host, reply.status_code, reply.text[:200])
        assert "is not a host" in reply.json()["error"]
        assert "ometer_" not in reply.text


_HOST_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)  # what a client sends


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.text(_HOST_CHARS, min_size=1, max_size=30))
def test_a_host_is_taken_only_as_a_host(keyed: tuple[Gateway, str], host: str) -> None:
    """Whatever the Host, the path a request is answered for is the one it asked: a Host
    that URL parsing would split into host and more (a path, a query, a fragment, user
    information) is refused; any other is a host, and /metrics stays the admin token's."""
    gw, key = keyed
    reply = gw.client.get("/metrics", headers={"Authorization": f"Bearer {key}", "Host": host})
    assert reply.status_code in (400, 403), (host, reply.status_code)
    assert "ometer_" not in reply.text


@pytest.mark.parametrize(
    "host", ["localhost:11435", "127.0.0.1", "[::1]:8080", "gpu-1.internal", "example.com:80", ""]
)
def test_a_host_as_clients_send_it_is_taken(keyed: tuple[Gateway, str], host: str) -> None:
    gw, key = keyed
    auth = {"Authorization": f"Bearer {key}", "Host": host}
    assert gw.client.get("/api/tags", headers=auth).status_code == 200
    assert gw.client.get("/metrics", headers=auth).status_code == 403
