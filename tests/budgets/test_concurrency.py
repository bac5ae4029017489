"""Concurrent `ometer chat` processes against one hard budget: no overshoot at all.

Each call is admitted on its bound (its prompt's bytes, and its num_predict), reserved
until it settles, so together they cannot spend past the limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import close_ledgers
from ollama_meter.testing import OllamaEmulator, expected_counts

OMETER = [sys.executable, "-m", "ollama_meter"]
PROMPT = "hello there friend"
IN, OUT = expected_counts("llama3.1:8b", [{"role": "user", "content": PROMPT}])
CALL = IN * 1000 + OUT * 2000  # micro-units


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OMETER, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


CALLERS = 4
"""Processes racing for the budget at once. The limit leaves room for two and a half calls,
so at least two are refused and a third admitted is an overshoot: the race a lost update
loses (one or two are admitted, on bounds above a call's cost). Twenty took 26-30 CPU
seconds a run (room for six and a half: seven admitted to show an overshoot); four, started
together, reach the gate while the others are admitting (each spends its first second
loading): 6.6-7.5 CPU seconds."""


@pytest.mark.slow
# Each backend once, one of them with history (the processes are the slow part).
@pytest.mark.parametrize(
    ("db_url", "warm"),
    [("sqlite", False), ("postgres", True)],
    ids=["sqlite-fresh-ledger", "postgres-with-history"],
    indirect=["db_url"],
)
def test_concurrent_callers_do_not_overshoot(
    cli: Any, emulator: OllamaEmulator, tmp_path: Path, db_url: str, warm: bool
) -> None:
    # The processes queue for one write lock; on a loaded machine that takes a while, and
    # this test is about overshoot, not about how long a busy ledger is waited for.
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": db_url,
        "OMETER_LEDGER_WAIT": "60",
    }
    # The prices and the budget, and the listing at the end, in this process: only the callers
    # race (a process of ometer's costs a second of CPU on a busy machine, 3 of 7-8 here).
    priced = cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1000", "--output-per-1m",
                 "2000", "--db", db_url)  # fmt: skip
    assert priced.code == 0, priced
    # Room for two and a half calls besides the history's one: each costs CALL (its bound at
    # admission is more), so at most two of the callers fit and the others are refused.
    limit = CALL * (2 + warm) + CALL // 2
    budget = cli("budget", "set", "sales", "--tenant", "acme", "--monthly", f"{limit / 1e6:.6f}",
                 "--db", db_url)  # fmt: skip
    assert budget.code == 0, budget
    close_ledgers()  # nothing of this process's is open on the ledger while the callers race

    def caller(_: int) -> int:
        return _run(
            env, "chat", "--dept", "sales", "--tenant", "acme", "-m", "llama3.1:8b",
            "-o", f"num_predict={OUT}", PROMPT,
        ).returncode  # fmt: skip

    if warm:
        assert caller(0) == 0

    with ThreadPoolExecutor(CALLERS) as pool:
        codes = list(pool.map(caller, range(CALLERS)))
    assert set(codes) <= {0, 3}, codes
    assert codes.count(0) >= 1 and codes.count(3) >= CALLERS - 2, codes  # the limit was reached
    spans = json.loads(cli("log", "--json", "--limit", "1000", "--db", db_url).stdout)
    assert len(spans) == CALLERS + warm
    ok = [s for s in spans if s["status"] == "ok"]
    rejected = [s for s in spans if s["status"] == "rejected"]
    assert len(ok) + len(rejected) == len(spans)
    assert len(rejected) == codes.count(3) and all(
        s["error_type"] == "budget_exceeded" for s in rejected
    )
    settled = sum(int(Decimal(s["cost"]) * 1_000_000) for s in ok)
    print(f"admitted {len(ok)}, refused {len(rejected)}, settled {settled} of {limit}")
    assert settled <= limit, (settled, limit)
    assert len(ok) >= 1
