"""A gateway key may expire: from that instant it is no live key, as a revoked one is.

Keys lived until someone revoked them, so a key handed to a contractor for a month, or left
in a script nobody owns, worked for ever. A key made with an expiry is refused at the door
(and, as a revoked key, when its call leaves the queue) from its expiry on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

HI = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seconds=st.integers(-(10**9), 10**9).filter(lambda s: abs(s) > 60))
def test_a_key_is_live_until_its_expiry_and_no_longer(sqlite_url: str, seconds: int) -> None:
    ledger = Ledger(sqlite_url)
    try:
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        key, secret = ledger.create_key(
            name="bot", tenant="acme", department="sales", expires_at=expires
        )
        assert key.expires_at == expires
        found = ledger.find_key(secret)
        assert (found is not None) == (seconds > 0)
        if found is not None:
            assert found.id == key.id and found.expires_at == key.expires_at
    finally:
        ledger.dispose()


@pytest.mark.parametrize("require_key", [True, False])
def test_an_expired_key_is_refused_at_the_door_and_a_live_one_is_not(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    require_key: bool,
) -> None:
    ledger = Ledger(sqlite_url)
    now = datetime.now(UTC)
    old = ledger.create_key(
        name="old", tenant="acme", department="sales", expires_at=now - timedelta(seconds=1)
    )[1]
    new = ledger.create_key(
        name="new", tenant="acme", department="sales", expires_at=now + timedelta(days=1)
    )[1]
    gw = app_on(emulator.url, sqlite_url, require_key=require_key)
    refused = gw.client.post("/api/chat", json=HI, headers={"Authorization": f"Bearer {old}"})
    assert refused.status_code == 401
    assert "not a live key (revoked, expired, or mistyped)" in refused.json()["error"]
    assert emulator.requests == []
    taken = gw.client.post("/api/chat", json=HI, headers={"Authorization": f"Bearer {new}"})
    assert taken.status_code == 200, taken.text
    assert len(emulator.requests) == 1
