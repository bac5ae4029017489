"""A dead client's open call is the gateway's when a gateway span names it and is charged
alike (``ledger/_client_spans.py``): on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ollama_meter.ledger import Ledger
from ollama_meter.ledger._client_spans import recorded_by_gateway
from tests.factories import make_span

ALIKE: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("differs", "spared"),
    [
        (ALIKE, True),
        ({"started_at": timedelta(minutes=-50)}, True),  # a gateway's clock behind
        ({"started_at": timedelta(hours=2)}, False),
        ({"tenant": "other"}, False),
        ({"department": "ops"}, False),
        ({"request_model": "qwen3:4b"}, False),
        ({"source": "sdk"}, False),  # only a gateway's note counts
        ({"tags": {}}, False),
        ({"tags": {"ometer.client_span": "01ABCDEFGHJKMNPQRSTVWXYZ00"}}, False),
    ],
)
def test_only_a_gateway_span_charged_alike_spares_the_copy(
    db_url: str, differs: dict[str, Any], spared: bool
) -> None:
    client = make_span(source="sdk")
    gateway: dict[str, Any] = {
        "source": "gateway",
        "tags": {"ometer.client_span": client.id},
        "started_at": client.started_at + timedelta(seconds=2),
    }
    for name, value in differs.items():
        gateway[name] = client.started_at + value if name == "started_at" else value
    ledger = Ledger(db_url)
    ledger.record([make_span(**gateway)])
    with ledger.read() as conn:
        assert recorded_by_gateway(conn, [client]) == ({client.id} if spared else set())
