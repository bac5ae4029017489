"""The time a hard budget's admission takes is the caller's wait, never Ollama's busy time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span

CLIENTS = {"sync": MeteredClient, "async": AsyncMeteredClient}
HELD_S = 1.0


@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_a_budgets_admission_waiting_on_a_busy_ledger_is_queue_time_not_priced(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where Ollama does not say how long it was busy (``/api/embed``), the meter's clock
    stands in from when the call was sent. A call under a hard budget is admitted first: its
    lease is taken from the ledger, and while another writer held the ledger it waited for
    it, and that wait was counted as Ollama's time: it ran off the 0.4 s the call was
    admitted on, so its answer was cut (OverCap) though Ollama had barely begun; under a
    looser bound it was priced as GPU time (at 1 USD a GPU-second, a second's wait cost the
    call 1 USD). The wait comes before the call is sent: queue time, in its latency."""
    monkeypatch.setenv("OLLAMA_HOST", emulator.url)
    client = CLIENTS[flavour](department="sales", tenant="acme", db_url=sqlite_url)
    ledger = client.meter.ledger
    ledger.add_price_rule(PriceRule(pattern="*", currency="USD", gpu_hour=Decimal(3600)))
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    # A model that loads in 2 s: the call is admitted on some 6 s of busy time, which a loaded
    # CI machine's emulator never runs past (the 0.4 s of a quicker history once did). The
    # wait still shows if it is counted: priced as GPU time, or lying before the writer let go.
    ledger.record(
        [
            make_span(
                request_model="nomic-embed-text",
                input_tokens=100,
                output_tokens=100,
                prompt_eval_duration_ns=100_000_000,
                eval_duration_ns=1_000_000_000,
                load_duration_ns=2_000_000_000,
            )
        ]
    )
    holder = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")  # the admission's lease waits for this writer
    released: list[datetime] = []

    def release() -> None:
        time.sleep(HELD_S)
        released.append(datetime.now(UTC))
        holder.execute("COMMIT")

    releasing = threading.Thread(target=release)
    releasing.start()
    try:
        if isinstance(client, AsyncMeteredClient):
            reply = asyncio.run(client.embed(model="nomic-embed-text", input="one text"))
        else:
            reply = client.embed(model="nomic-embed-text", input="one text")
    finally:
        releasing.join()
        holder.close()
    (span,) = ledger.latest(SpanFilter(department="sales", status="ok"), 5)[:1]
    assert (span.id, span.duration_source) == (reply.meter.id, "measured")
    assert span.queue_ns is not None and span.latency_ns is not None
    priced = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
    busy = priced + (span.load_duration_ns or 0)
    # The wait is in the latency, as queue: all of it, up to the writer letting go. (Busy and
    # queue need not fill the latency: a retry's pause, after a first try lost under load, is
    # neither; that once left 0.24 s over in a full run.)
    assert busy + span.queue_ns <= span.latency_ns
    waited = released[0] - span.started_at
    assert span.queue_ns >= (waited - timedelta(milliseconds=1)) // timedelta(microseconds=1) * 1000
    # Ollama had the call only once the admission was done, after the writer let go: the
    # time priced as Ollama's lies wholly after that.
    ended = span.started_at + timedelta(microseconds=span.latency_ns // 1000)
    assert ended - timedelta(microseconds=busy // 1000) >= released[0] - timedelta(milliseconds=1)
    assert span.cost_compute == round(Decimal(priced) / 1000)  # a micro-dollar a microsecond
