"""The gateway's cost: direct to the emulator vs through `ometer serve`, in the same run.

Three processes, so none measures the others' cost: the emulator (``python -m
ollama_meter.testing``, no artificial latency), the gateway (``ometer serve``, ledger
on, a SQLite file) and this load generator (aiohttp). It measures:
  - sequential latency, non-streamed and streamed chat: p50, p99, added ms at p50;
  - throughput at concurrency 32 and 64 (requests/s), direct and through the gateway;
  - the gateway process's RSS after N requests (default 50,000), sampled along the way.

    python bench/gateway.py [--sequential 500] [--burst 3000] [--rss-requests 50000]
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
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ollama_meter.testing import unused_port

BODY = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": False,
}
STREAM = {**BODY, "stream": True}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(
    args: list[str], ready: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    for _ in range(400):
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start")


async def sequential(url: str, body: dict[str, object], n: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession(url) as client:
        for _ in range(20):
            async with client.post("/api/chat", json=body) as reply:
                await reply.read()
        for _ in range(n):
            start = time.perf_counter()
            async with client.post("/api/chat", json=body) as reply:
                async for _ in reply.content.iter_any():
                    pass
            times.append((time.perf_counter() - start) * 1000)
    return times


async def burst(url: str, body: dict[str, object], total: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                async with client.post("/api/chat", json=body) as reply:
                    await reply.read()
                    reply.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rss-requests", type=int, default=50_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-gw-bench-"))
    emu_port, gw_port = unused_port(), unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{folder / 'ledger.db'}"}
    proc = start(
        ["ollama_meter", "serve", "--port", str(gw_port), "--upstream", emulator],
        f"{gateway}/healthz",
        env,
    )
    try:
        print(f"gateway {gateway} -> emulator {emulator}; ledger {folder / 'ledger.db'}")
        print(f"\n{'sequential chat':<28} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10}")
        for label, body in (("non-streamed", BODY), ("streamed", STREAM)):
            direct = asyncio.run(sequential(emulator, body, args.sequential))
            through = asyncio.run(sequential(gateway, body, args.sequential))
            for name, values in ((f"{label}, direct", direct), (f"{label}, gateway", through)):
                added = statistics.median(values) - statistics.median(direct)
                print(
                    f"{name:<28} {statistics.median(values):>8.3f} {pct(values, 0.99):>8.3f} {added:>10.3f}"
                )
        print(f"\n{'throughput':<28} {'req/s':>8} {'share':>8}")
        for label, body in (("non-streamed", BODY), ("streamed", STREAM)):
            for concurrency in (32, 64):
                direct_rate = asyncio.run(burst(emulator, body, args.burst, concurrency))
                rate = asyncio.run(burst(gateway, body, args.burst, concurrency))
                print(f"{f'{label}, c={concurrency}, direct':<28} {direct_rate:>8.0f}")
                print(
                    f"{f'{label}, c={concurrency}, gateway':<28} {rate:>8.0f} {rate / direct_rate:>8.2f}"
                )
        print(f"\nRSS of the gateway process (MB) over {args.rss_requests} requests")
        done = 0
        samples = [(0, rss_mb(proc.pid))]
        step = max(args.rss_requests // 5, 1)
        while done < args.rss_requests:
            count = min(step, args.rss_requests - done)
            asyncio.run(burst(gateway, BODY, count, 32))
            done += count
            samples.append((done, rss_mb(proc.pid)))
        print("  " + "  ".join(f"{n}: {mb:.1f}" for n, mb in samples))
    finally:
        for running in (proc, emu):
            running.terminate()
            running.wait(timeout=30)


if __name__ == "__main__":
    main()
