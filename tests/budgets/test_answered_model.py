"""A reply naming another model than the one asked for: the price its bound was computed under."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, Meter
from ollama_meter.records import Budget
from tests.factories import token_prices

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)


class Naming:
    """An Ollama-compatible server that answers every chat naming ``model`` (a proxy that
    routes the name it was sent to another model, or a server that lies)."""

    def __init__(self) -> None:
        self.model: str | None = "llama3.1:8b"
        naming = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                answer: dict[str, Any] = {
                    "created_at": "2026-11-10T12:00:00Z",
                    "message": {"role": "assistant", "content": "hi"},
                    "done": True,
                    "done_reason": "stop",
                    "prompt_eval_count": 10,
                    "eval_count": 2,
                }
                if naming.model is not None:
                    answer["model"] = naming.model
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture(scope="module")
def naming() -> Iterator[Naming]:
    server = Naming()
    yield server
    server.server.shutdown()


LIMIT = 10**12
PRICEY = replace(token_prices("llama3.1:70b"), input_per_1m=Decimal(90_000))


@settings(max_examples=25)
@given(
    asked=st.sampled_from(["llama3.1:8b", "library/llama3.1:8b", "mystery:1b"]),
    answered=st.sampled_from([None, "llama3.1:8b", "llama3.1:70b", "mystery:1b", "other:2b"]),
)
def test_a_reply_naming_another_model_is_charged_within_the_bound_it_was_admitted_on(
    tmp_path_factory: pytest.TempPathFactory, naming: Naming, asked: str, answered: str | None
) -> None:
    """Under a hard budget a call is bounded by the price of the model asked for; it was
    charged by the price of the model the reply named. A call for llama3.1:8b answered as
    llama3.1:70b was admitted on 0.046 USD and charged 0.9: each call so answered spent
    twenty times what the budget held for it, so a full lease of them spent far past the
    limit (and a call for a model no rule prices was admitted on nothing at all)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger')}/ometer.db"
    cfg = load_settings(db_url=url, timezone="Europe/Berlin", ollama_host=naming.url)
    meter = Meter.from_settings(cfg, source="sdk", clock=lambda: NOV)
    meter.ledger.add_price_rule(token_prices("llama3.1:8b"))
    meter.ledger.add_price_rule(PRICEY)
    meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=LIMIT, currency="USD")
    )
    naming.model = answered
    try:
        run = meter.chat(
            model=asked,
            messages=[{"role": "user", "content": "hi"}],
            attribution=Attribution(tenant="acme", department="sales"),
            stream=False,
            options={"num_predict": 2},
        )
        list(run)
    finally:
        naming.model = "llama3.1:8b"
    assert run.call is not None and run.call.reservation is not None
    span = meter.ledger.latest(SpanFilter(), 1)[0]
    assert span.status == "ok"
    assert span.cost_total <= run.call.reservation.amount  # what the budget held for it
    # Priced as asked: by the rule the bound came from, which a reprice finds again.
    assert span.cost_total == meter.prices().cost_of(span).total
    rule = meter.prices().rule_for(asked, NOV)
    assert span.price_rule_id == (None if rule is None else rule.id)
