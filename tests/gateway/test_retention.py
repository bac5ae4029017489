"""OMETER_KEEP_DAYS: a gateway prunes raw spans past the horizon, and reports stay the same."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._meta import pruned_before
from ollama_meter.meter import utc_now
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span


def test_a_gateway_prunes_what_is_older_than_keep_days(
    serve: Any, db_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_KEEP_DAYS", "30")
    now = utc_now()
    old = [make_span(started_at=now - timedelta(days=40 + n)) for n in range(5)]
    recent = [make_span(started_at=now - timedelta(days=n)) for n in range(3)]
    Ledger(db_url).record([*old, *recent])
    gateway = serve(emulator.url)
    deadline = time.monotonic() + 20
    while gateway.ledger.count() > 3:
        assert time.monotonic() < deadline, "the gateway did not prune"
        time.sleep(0.05)
    assert {s.id for s in gateway.ledger.latest(SpanFilter(), 10)} == {s.id for s in recent}
    with gateway.ledger.read() as conn:
        horizon = pruned_before(conn)
    assert horizon is not None
