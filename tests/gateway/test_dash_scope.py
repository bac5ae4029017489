"""With keys required and no admin token, a key opens the dashboard for its own tenant and
department only: any key read every tenant's spend, budgets and names (``/dashboard``,
``/api/dash``) and every tenant's counters (``/metrics``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.gateway._dash import for_scope
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
WHO = [
    ("acme", "sales", "ann-q1", "llama3.1:8b", 1_250_000),
    ("acme", "support", "bob-q2", "qwen2.5:7b", 500_000),
    ("globex", "legal", "cyd-q3", "mistral:7b", 700_000),
    ("globex", "sales", "dee-q4", "gemma2:9b", 300_000),
]


@pytest.fixture
def scoped(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> tuple[Gateway, dict[tuple[str, str], str]]:
    gw = app_on(emulator.url, sqlite_url, require_key=True, clock=lambda: NOW)
    gw.ledger.record(
        [
            make_span(
                started_at=AT, tenant=t, department=d, user=u, request_model=m,
                cost_total=cost, cost_tokens=cost, unpriced=False,
            )
            for t, d, u, m, cost in WHO
        ]
    )  # fmt: skip
    for tenant, department in {(t, d) for t, d, *_ in WHO}:
        gw.ledger.save_budget(Budget(tenant, department, "month", 90_000_000, "USD"))
    gw.ledger.save_budget(Budget("acme", None, "month", 80_000_000, "USD"))
    keys = {
        (t, d): gw.ledger.create_key(name=f"{t}-{d}", tenant=t, department=d)[1] for t, d, *_ in WHO
    }
    return gw, keys


@pytest.mark.parametrize("who", WHO, ids=lambda w: f"{w[0]}-{w[1]}")
def test_a_key_sees_its_own_department_and_no_one_elses_names(
    scoped: tuple[Gateway, dict[tuple[str, str], str]], who: tuple[str, str, str, str, int]
) -> None:
    gw, keys = scoped
    tenant, department, user, model, cost = who
    auth = {"Authorization": f"Bearer {keys[tenant, department]}"}
    answer = gw.client.get("/api/dash", headers=auth)
    page = gw.client.get("/dashboard", headers=auth)
    assert (answer.status_code, page.status_code) == (200, 200)
    body = answer.json()
    assert [(b["scope"], b["limit"]) for b in body["budgets"]] == [
        (f"{tenant}/{department}", "90.000000")
    ]
    assert [(r["tenant"], r["department"], r["cost"]) for r in body["departments"]] == [
        (tenant, department, f"{cost // 1_000_000}.{cost % 1_000_000:06d}")
    ]
    text = json.dumps(body) + page.text
    assert user in text and model in text
    for other in WHO:
        if other[:2] != (tenant, department):
            assert other[2] not in text and other[3] not in text, other
    others = {t for t, *_ in WHO} - {tenant}
    assert not any(f'"{name}"' in text for name in others)


@pytest.mark.parametrize("query", ["tenant=globex", "dept=support", "tenant=acme&dept=legal"])
def test_a_key_asking_for_another_scope_is_refused(
    scoped: tuple[Gateway, dict[tuple[str, str], str]], query: str
) -> None:
    gw, keys = scoped
    auth = {"Authorization": f"Bearer {keys['acme', 'sales']}"}
    for path in ("/api/dash", "/dashboard"):
        reply = gw.client.get(f"{path}?{query}", headers=auth)
        assert reply.status_code == 403, (path, reply.text)
        assert "this key sees its own tenant and department only (acme, sales)" in reply.text
    own = gw.client.get("/api/dash?tenant=acme&dept=sales", headers=auth)
    assert own.status_code == 200


def test_metrics_need_the_admin_token_not_a_key(
    scoped: tuple[Gateway, dict[tuple[str, str], str]],
) -> None:
    gw, keys = scoped
    reply = gw.client.get("/metrics", headers={"Authorization": f"Bearer {keys['acme', 'sales']}"})
    assert reply.status_code == 403
    assert "/metrics counts every tenant's calls, so a key does not open it" in reply.text
    assert gw.client.get("/metrics").status_code == 401


def test_the_admin_token_still_sees_every_tenant(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url, require_key=True, admin_token="t0ken", clock=lambda: NOW)
    gw.ledger.record([make_span(started_at=AT, tenant=t, department=d) for t, d, *_ in WHO])
    body = gw.client.get("/api/dash", headers={"Authorization": "Bearer t0ken"}).json()
    assert {(r["tenant"], r["department"]) for r in body["departments"]} == {
        (t, d) for t, d, *_ in WHO
    }
    assert gw.client.get("/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200


_NAME = st.sampled_from(["acme", "globex", "sales", "legal", "a/b"])


@given(
    waiting=st.dictionaries(st.tuples(_NAME, _NAME).map("/".join), st.integers(1, 9)),
    scope=st.tuples(_NAME, _NAME),
)
def test_the_queue_a_key_sees_names_no_other_department(
    waiting: dict[str, int], scope: tuple[str, str]
) -> None:
    """/api/dash's queue named every department with calls waiting: a key's answer names its own."""
    servers = {
        "servers": [{"url": "http://gpu1:11434"}],
        "queue": {"waiting": 7, "by_department": waiting},
    }
    seen = for_scope(servers, scope)
    own = "/".join(scope)
    assert seen["queue"] == {
        "waiting": 7,
        "by_department": {k: v for k, v in waiting.items() if k == own},
    }
    assert seen["servers"] == servers["servers"] and for_scope(servers, None) == servers


def test_the_servers_a_key_sees_count_no_other_tenants_calls(
    scoped: tuple[Gateway, dict[tuple[str, str], str]],
) -> None:
    """Each server's ``served`` counted every tenant's calls since the gateway started (what
    /metrics is closed to a key for): globex's three calls read as 3 to acme's key."""
    gw, keys = scoped
    ask = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        reply = gw.client.post(
            "/api/chat", json=ask, headers={"Authorization": f"Bearer {keys['globex', 'legal']}"}
        )
        assert reply.status_code == 200
    seen = gw.client.get("/api/dash", headers={"Authorization": f"Bearer {keys['acme', 'sales']}"})
    (server,) = seen.json()["servers"]
    assert "served" not in server, server
    assert server["state"] == "up" and server["in_flight"] == 0


def test_a_keys_filter_hint_names_its_own_models_only(
    scoped: tuple[Gateway, dict[tuple[str, str], str]],
) -> None:
    """The names a typo is near are the key's own (globex's ``gemma2:9b`` is no hint for acme);
    its own tenant and department, which it did not type, are no typo in a month it has none."""
    gw, keys = scoped
    auth = {"Authorization": f"Bearer {keys['acme', 'sales']}"}
    typo = gw.client.get("/api/dash?model=gemma2:9", headers=auth).json()["warnings"]
    assert typo == ["no call in 2026-11 has model 'gemma2:9'"]
    assert gw.client.get("/api/dash?period=2026-10", headers=auth).json()["warnings"] == []
