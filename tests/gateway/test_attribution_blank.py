"""An attribution header sent empty is refused, never read as one not sent.

``X-Ometer-Department: $DEPT`` with ``DEPT`` unset sent the header empty, and the gateway
charged the call to the default department, as if the client had named none: the mistake
was silent, as ``ometer chat --dept "$DEPT"`` is not (it refuses a name given empty)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

BODY = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize("header", ["X-Ometer-Tenant", "X-Ometer-Department", "X-Ometer-User"])
def test_a_name_header_sent_empty_is_refused_naming_it(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, header: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(blank=st.sampled_from(["", " ", "\t", "  \t "]))
    def refused(blank: str) -> None:
        answer = gw.client.post("/api/chat", json=BODY, headers={header: blank})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == (
            f"{header} is empty: name the {header.rsplit('-', 1)[1].lower()}, or leave the "
            "header out for the default"
        )

    refused()
    refusals = gw.ledger.latest(SpanFilter(), 100)
    assert {(s.status, s.error_type, s.http_status, s.cost_total) for s in refusals} == {
        ("error", "bad_request", 400, 0)
    }
    assert emulator.requests_to("/api/chat") == []
    assert gw.client.post("/api/chat", json=BODY, headers={header: "sales"}).status_code == 200
