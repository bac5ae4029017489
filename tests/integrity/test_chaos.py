"""Chaos on one ledger: a gateway serving calls (half under a hard budget), a Python API writer
killed with ``kill -9`` at a seeded moment, and upkeep (``db prune``, ``db rollup``,
``reprice``, ``budget set``) all at once. Afterwards: every answered call is one span, the
rollups are what a rebuild from raw spans gives, pruned months read as before, the budget held,
and ``budget status`` and ``report`` say what the raw spans sum to."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, rebuild
from ollama_meter.ledger.models import SPANS
from ollama_meter.periods import parse_period
from ollama_meter.reports import chargeback, spend_report, to_csv
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.factories import make_span, token_prices
from tests.gateway.test_processes import OMETER, start_gateway
from tests.ledger.test_transfer import _tables

UTC_ZONE = ZoneInfo("UTC")
HELLO = [{"role": "user", "content": "hello there friend"}]
CAPPED, FREE = "llama3.1:8b", "qwen2.5:7b"
OUT = expected_counts(CAPPED, HELLO)[1]
# What one capped call may cost at most, as the gate bounds it (tests/budgets/test_leases.py).
BOUND = (len(HELLO[0]["content"].encode()) + 32 + 8) * 1000 + OUT * 2000

WRITER = """
import sys
from ollama_meter import BudgetExceeded, MeteredClient
hello = [{"role": "user", "content": "hello there friend"}]
client = MeteredClient(tenant="default")
n = 0
while True:
    capped = n % 2 == 0
    user = f"w{n}"
    try:
        r = client.chat(
            model="llama3.1:8b" if capped else "qwen2.5:7b", messages=hello,
            options={"num_predict": int(sys.argv[1])},
            department="capped" if capped else "free", user=user,
        )
        print(user, r.meter.id, flush=True)
    except BudgetExceeded:
        print(user, "rejected", flush=True)
    n += 1
"""


def _ometer(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*OMETER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (args, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def _monthly(ledger: Ledger, month: str, now: datetime) -> list[str]:
    window = parse_period(month, tz=UTC_ZONE, now=now)
    spend = spend_report(ledger, window, ["tenant", "department", "model", "day"], tz=UTC_ZONE)
    bill = chargeback(
        ledger,
        month,
        tz=UTC_ZONE,
        now=now,
        currency="USD",
        fixed_cost=Decimal(900),
        idle="separate",
    )
    return [
        to_csv(spend.columns, spend.rows),
        to_csv(list(bill.rows[0]) if bill.rows else [], bill.rows),
    ]


@pytest.mark.slow
def test_a_gateway_a_killed_writer_and_upkeep_at_once_keep_every_invariant(
    db_url: str, emulator: OllamaEmulator
) -> None:
    rng = random.Random(1)  # the upkeep order and the moment of the kill
    emulator.token_latency = 0.002  # a call is in flight, upstream, much of the time
    env = {**os.environ, "OMETER_DB_URL": db_url, "OLLAMA_HOST": emulator.url}
    started = datetime.now(UTC)
    ledger = Ledger(db_url)
    # Old calls for the prune to remove: 40 to 60 days ago, in months the live calls never touch.
    old = [
        make_span(
            started_at=started - timedelta(days=40 + n % 20, minutes=n * 7),
            department=("old", "older")[n % 2],
            request_model=CAPPED,
            cost_tokens=1000 + n,
            cost_total=1000 + n,
            eval_duration_ns=(n + 1) * 10**7,
        )
        for n in range(60)
    ]
    ledger.record(old)
    months = sorted({f"{s.started_at:%Y-%m}" for s in old})
    before = {month: _monthly(ledger, month, started) for month in months}
    ledger.add_price_rule(token_prices("*"))
    # Raised mid-way (a lowered limit binds a gateway only from its next reload of budgets).
    first_limit, last_limit = 12 * BOUND, 24 * BOUND
    ledger.save_budget(Budget(tenant="default", department="capped", period="day",
                              limit=first_limit, currency="USD"))  # fmt: skip

    gateway, url = start_gateway(env, emulator.url)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(OUT)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = 0
            while not stop.is_set():
                capped = n % 2 == 0
                user = f"g{number}-{n}"
                reply = http.post(
                    "/api/chat",
                    json={"model": CAPPED if capped else FREE, "messages": HELLO, "stream": n % 3 == 0,
                          "options": {"num_predict": OUT}},
                    headers={"X-Ometer-Department": "capped" if capped else "free",
                             "X-Ometer-User": user},
                )  # fmt: skip
                answers.append((user, reply.status_code))
                n += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in clients:
        thread.start()
    upkeep = [
        ("db", "prune", "--keep-days", "30"),
        ("db", "rollup"),
        ("pricing", "set", "qwen2.5:*", "--input-per-1m", "3000", "--output-per-1m", "500"),
        ("reprice", "--since", f"{started - timedelta(days=1):%Y-%m-%d}"),
        (
            "budget",
            "set",
            "capped",
            "--tenant",
            "default",
            "--daily",
            str(Decimal(last_limit) / 10**6),
        ),
        ("db", "rollup"),
    ]
    rng.shuffle(upkeep)
    kill_after = rng.randrange(1, len(upkeep))  # the writer dies while upkeep runs
    t0 = time.monotonic()
    for number, command in enumerate(upkeep):
        if number == kill_after:
            time.sleep(rng.uniform(0, 0.5))
            writer.send_signal(signal.SIGKILL)
        _ometer(env, *command)
    if writer.poll() is None:
        writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    chaos_s = time.monotonic() - t0
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(timeout=30)
    assert writer.stdout is not None
    written = [line.split() for line in writer.stdout.read().splitlines()]
    # The next process that meters a call records what the killed writer left in flight.
    _ometer(env, "chat", "--dept", "free", "--user", "last", "-m", FREE, "hello")

    with ledger.read() as conn:
        spans = {
            row.id: row
            for row in conn.execute(
                select(SPANS.c.id, SPANS.c.user, SPANS.c.department, SPANS.c.status,
                       SPANS.c.cost_total, SPANS.c.started_at, SPANS.c.request_model)
            )
        }  # fmt: skip
    by_user = Counter(row.user for row in spans.values())
    print(
        f"chaos {chaos_s:.1f} s: {len(answers)} gateway calls, {len(written)} writer calls, "
        f"upkeep {upkeep}, writer killed before #{kill_after}; {Counter(r.status for r in spans.values())}"
    )
    # Every answered call is exactly one span.
    assert answers and written
    assert {code for _, code in answers} <= {200, 429}
    assert all(by_user[user] == 1 for user, _ in answers), [
        u for u, _ in answers if by_user[u] != 1
    ]
    for user, outcome in written:
        assert by_user[user] == 1, user
        if outcome != "rejected":
            assert spans[outcome].user == user
    users = {f"w{n}" for n in range(len(written) + 1)}
    assert {u for u in by_user if u and u.startswith("w")} <= users  # at most the one in flight
    assert by_user["last"] == 1
    statuses = Counter(row.status for row in spans.values() if row.user and row.user[0] in "gw")
    assert statuses["rejected"] > 0 and statuses["ok"] > 0, statuses

    # The rollups are what a rebuild from the raw spans gives; pruned months read as before.
    assert ledger.pruned_before() is not None
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    assert {month: _monthly(ledger, month, started) for month in months} == before

    # The hard budget held across both processes.
    status = json.loads(_ometer(env, "budget", "status", "--json"))[0]
    start, end = (
        datetime.fromisoformat(status[k].replace("Z", "+00:00"))
        for k in ("period_start", "period_end")
    )
    capped = [
        r
        for r in spans.values()
        if r.department == "capped" and start <= r.started_at.replace(tzinfo=UTC) < end
    ]
    spent = sum(r.cost_total for r in capped)
    assert spent <= last_limit + BOUND
    assert Decimal(status["spent"]) * 10**6 == spent
    assert Decimal(status["limit"]) * 10**6 == last_limit

    # The report says what the raw spans sum to, per department.
    report = json.loads(
        _ometer(
            env,
            "report",
            "--since",
            f"{started:%Y-%m-%d}",
            "--by",
            "department",
            "--format",
            "json",
        )
    )
    live = [
        r
        for r in spans.values()
        if r.started_at.replace(tzinfo=UTC)
        >= started.replace(hour=0, minute=0, second=0, microsecond=0)
    ]
    raw = {}
    for row in live:
        count, cost = raw.get(row.department, (0, 0))
        raw[row.department] = (count + 1, cost + row.cost_total)
    rows = report["rows"] if isinstance(report, dict) else report
    assert {r["department"]: (r["requests"], Decimal(r["cost"]) * 10**6) for r in rows} == raw
