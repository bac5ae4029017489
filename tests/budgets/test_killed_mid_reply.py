"""A process killed (``kill -9``) while a call a hard budget admitted streams its reply.

Only a real process shows it: the caller has the reply's pieces, and the call's journal line
is all the next process finds of it."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.records import Budget, PriceRule
from ollama_meter.testing import OllamaEmulator
from ollama_meter.testing._models import DEFAULT_MODELS

LONG = dataclasses.replace(DEFAULT_MODELS[0], reply_tokens=5_000)

STREAMS = """
import sys, threading
from ollama_meter import MeteredClient

host, url, route = sys.argv[1], sys.argv[2], sys.argv[3]
client = MeteredClient(host, db_url=url, tenant="acme", department="sales")
if route == "chat":
    pieces = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "write"}],
                         stream=True, options={"num_predict": 1000})
else:
    pieces = client.generate(model="llama3.1:8b", prompt="write", stream=True)
for n, _ in enumerate(pieces, 1):
    if n == 900:  # the caller has 900 pieces of the reply: then the process is killed
        print("900", flush=True)
        threading.Event().wait()
"""


@pytest.fixture
def long_replies() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(models=[LONG]) as emulator:
        yield emulator


def _held(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT COALESCE(SUM(amount_micros), 0) FROM budget_reservations")
        return int(row.fetchone()[0])


@pytest.mark.parametrize("route", ["chat", "generate"])
@pytest.mark.parametrize(
    "price",
    [
        {"output_per_1m": Decimal(1000)},
        {"per_request": Decimal("0.25")},
        {"gpu_hour": Decimal(3600)},
    ],
    ids=["tokens", "fee", "time"],
)
def test_a_call_killed_mid_reply_is_charged_what_its_hard_budget_held_for_it(
    long_replies: OllamaEmulator, tmp_path: Path, route: str, price: dict[str, Decimal]
) -> None:
    """It was charged its prompt alone, estimated (here 0: the prompt is free, or the fee
    not charged, or no time): a caller that killed its own process once it had the reply
    (900 tokens of 1,000 admitted, 0.90 USD) spent nothing, and did it again and again under
    a hard limit of 1.50. What Ollama did is unknown, and the hard budget held the call's
    bound for it: that is what it is charged, so the budget holds."""
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    ledger = open_ledger(url)
    ledger.add_price_rule(PriceRule(pattern="*", currency="USD", **price))
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )
    ledger.dispose()
    child = subprocess.Popen(
        [sys.executable, "-c", STREAMS, long_replies.url, url, route],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "900"
        held = _held(db)  # the call's own reservation: its bound
        assert held > 0
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    with MeteredClient(long_replies.url, db_url=url) as reader:  # recovers the dead one's call
        spans = reader.meter.ledger.latest(SpanFilter(), 5)
    cap = 1000 if route == "chat" else 4096  # the caller's, or OMETER_BUDGET_REPLY_CAP's
    timed = "measured" if "gpu_hour" in price else None  # an upper bound, not Ollama's speed
    assert [(s.status, s.cost_total, s.output_tokens, s.duration_source) for s in spans] == [
        ("interrupted", held, cap, timed)
    ]
    assert _held(db) == 0
