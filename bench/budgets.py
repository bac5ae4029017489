"""Budgets at gateway speed: calls a hard budget covers against calls none covers, same run.

One emulator, one gateway (``ometer serve``, SQLite ledger). Department ``capped`` has a hard
monthly budget far above what the run spends; department ``free`` has none. Interleaved
rounds measure throughput (non-streamed chat, concurrency 32) and sequential p50 latency for
each, and print the medians and the ratios (goal: budgeted >= 0.8x the throughput, p50 <= 1.3x).

    python bench/budgets.py [--rounds 5] [--burst 2000] [--sequential 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import BODY, start
from ollama_meter.testing import unused_port


async def burst(url: str, dept: str, total: int, concurrency: int) -> float:
    headers = {"X-Ometer-Department": dept, "X-Ometer-Tenant": "acme"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                async with client.post("/api/chat", json=BODY) as reply:
                    await reply.read()
                    reply.raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - began)


async def sequential(url: str, dept: str, n: int) -> float:
    headers = {"X-Ometer-Department": dept, "X-Ometer-Tenant": "acme"}
    times = []
    async with aiohttp.ClientSession(url, headers=headers) as client:
        for _ in range(n):
            began = time.perf_counter()
            async with client.post("/api/chat", json=BODY) as reply:
                await reply.read()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-budget-bench-"))
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{folder / 'ledger.db'}"}
    for setup in (
        ["pricing", "set", "*", "--input-per-1m", "0.1", "--output-per-1m", "0.2"],
        ["budget", "set", "capped", "--tenant", "acme", "--monthly", "1000000"],
    ):
        subprocess.run([sys.executable, "-m", "ollama_meter", *setup], env=env, check=True,
                       capture_output=True)  # fmt: skip
    emu_port, gw_port = unused_port(), unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    proc = start(
        ["ollama_meter", "serve", "--port", str(gw_port), "--upstream", emulator],
        f"{gateway}/healthz",
        env,
    )
    rates: dict[str, list[float]] = {"free": [], "capped": []}
    p50s: dict[str, list[float]] = {"free": [], "capped": []}
    try:
        for dept in rates:  # warm up both paths (the first lease, the budget cache)
            asyncio.run(burst(gateway, dept, 200, 8))
        for round_ in range(args.rounds):
            for dept in ("free", "capped") if round_ % 2 == 0 else ("capped", "free"):
                rates[dept].append(asyncio.run(burst(gateway, dept, args.burst, 32)))
                p50s[dept].append(asyncio.run(sequential(gateway, dept, args.sequential)))
        print(f"{'department':<22} {'req/s (median)':>15} {'p50 ms (median)':>16}")
        for dept, label in (("free", "no budget"), ("capped", "hard budget")):
            print(
                f"{label:<22} {statistics.median(rates[dept]):>15.0f} {statistics.median(p50s[dept]):>16.3f}"
            )
        throughput = statistics.median(rates["capped"]) / statistics.median(rates["free"])
        latency = statistics.median(p50s["capped"]) / statistics.median(p50s["free"])
        print(
            f"\nbudgeted / unbudgeted: throughput {throughput:.2f}x, sequential p50 {latency:.2f}x"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        emu.terminate()
        emu.wait(timeout=30)


if __name__ == "__main__":
    main()
