"""A fleet behind one gateway: throughput with 3 servers vs 1, added latency, and fairness.

Real processes: emulators (``python -m ollama_meter.testing``), gateways (``ometer
serve``, SQLite ledger) and this load generator (aiohttp). It measures:

  - added latency: sequential non-streamed chat, direct to an emulator and through a
    gateway in front of 1 and of 3 emulators (no artificial latency): p50 and p99, and
    the added ms at p50;
  - throughput: calls per second through a gateway with 1 and with 3 emulators, each
    emulator generating slowly (``--token-latency``) and given ``--slots`` calls at once,
    as a GPU box would be, under ``--concurrency`` callers;
  - fairness: one department floods a gateway (``--flood`` callers, each calling again
    as soon as it has its answer) while another makes one call at a time; the small
    department's wait for a slot (the spans' ``durations_ns.queue``) p50 and p95, with
    its calls in their own department (the fair queue) and, in the same run, sent as
    the flooding department (first come, first served: what Ollama's own queue does).

    python bench/fleet.py [--token-latency 0.01] [--slots 2] [--flood 40] [--small 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import start
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import unused_port

BODY = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": False,
}


def emulators(n: int, token_latency: float, env: dict[str, str]) -> list[tuple[str, object]]:
    started = []
    for _ in range(n):
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        args = ["ollama_meter.testing", "--port", str(port), "--token-latency", str(token_latency)]
        started.append((url, start(args, url, env)))
    return started


def gateway(upstreams: list[str], env: dict[str, str], *options: str) -> tuple[str, object]:
    port = unused_port()
    ups = [arg for url in upstreams for arg in ("--upstream", url)]
    proc = start(
        ["ollama_meter", "serve", "--port", str(port), *ups, *options],
        f"http://127.0.0.1:{port}/healthz",
        env,
    )
    return f"http://127.0.0.1:{port}", proc


async def call(client: aiohttp.ClientSession, dept: str = "batch", user: str = "") -> None:
    headers = {"X-Ometer-Department": dept, **({"X-Ometer-User": user} if user else {})}
    async with client.post("/api/chat", json=BODY, headers=headers) as reply:
        await reply.read()
        if reply.status != 200:
            raise SystemExit(f"a call failed: HTTP {reply.status}")


async def sequential(url: str, n: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession(url) as client:
        for _ in range(20):
            await call(client)
        for _ in range(n):
            began = time.perf_counter()
            await call(client)
            times.append((time.perf_counter() - began) * 1000)
    return times


async def throughput(url: str, total: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as client:
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                await call(client)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - began)


async def fairness(url: str, flood: int, small: int, small_dept: str) -> None:
    """``flood`` batch callers keep calling while ``small_dept`` makes ``small`` calls, one by one."""
    connector = aiohttp.TCPConnector(limit=flood + 2)
    async with aiohttp.ClientSession(url, connector=connector) as client:
        done = asyncio.Event()

        async def flooder() -> None:
            while not done.is_set():
                await call(client, "batch")

        flooders = [asyncio.create_task(flooder()) for _ in range(flood)]
        await asyncio.sleep(1.0)  # the queue fills
        for _ in range(small):
            await call(client, small_dept, "small")
            await asyncio.sleep(0.05)
        done.set()
        await asyncio.gather(*flooders)


def pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-p * len(ordered) // 100) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--token-latency", type=float, default=0.01)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--total", type=int, default=300)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--small", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{Path(tmp) / 'l.db'}"}
        procs: list[object] = []
        try:
            fast = emulators(3, 0.0, env)
            procs += [p for _, p in fast]
            one_fast, one_fast_proc = gateway([fast[0][0]], env)
            three_fast, three_fast_proc = gateway([u for u, _ in fast], env)
            procs += [one_fast_proc, three_fast_proc]
            print(f"added latency, sequential non-streamed chat ({args.sequential} calls each)")
            direct = asyncio.run(sequential(fast[0][0], args.sequential))
            for name, url in (
                ("direct", fast[0][0]),
                ("1 upstream", one_fast),
                ("3 upstreams", three_fast),
            ):
                times = (
                    direct if name == "direct" else asyncio.run(sequential(url, args.sequential))
                )
                added = statistics.median(times) - statistics.median(direct)
                print(
                    f"  {name:12} p50 {statistics.median(times):6.2f} ms  p99 {pct(times, 99):6.2f} ms"
                    + (f"  added at p50 {added:+.2f} ms" if name != "direct" else "")
                )

            slow = emulators(3, args.token_latency, env)
            procs += [p for _, p in slow]
            slots = ("--slots", str(args.slots))
            one, one_proc = gateway([slow[0][0]], env, *slots)
            three, three_proc = gateway([u for u, _ in slow], env, *slots)
            procs += [one_proc, three_proc]
            print(
                f"throughput, {args.total} calls from {args.concurrency} callers; each server "
                f"{args.slots} slots, {args.token_latency * 1000:g} ms a token"
            )
            rates = {}
            for name, url in (("1 upstream", one), ("3 upstreams", three)):
                rates[name] = asyncio.run(throughput(url, args.total, args.concurrency))
                print(f"  {name:12} {rates[name]:7.1f} calls/s")
            print(f"  3 vs 1: {rates['3 upstreams'] / rates['1 upstream']:.2f}x")

            print(
                f"fairness: {args.flood} batch callers flood one server ({args.slots} slots), "
                f"support makes {args.small} calls one by one"
            )
            ledger = open_ledger(env["OMETER_DB_URL"])
            for label, dept in (("fair queue", "support"), ("FIFO", "batch")):
                # FIFO: support's calls go as batch's, so they wait in batch's one line.
                since = ledger.latest(SpanFilter(), 1)[0].started_at
                asyncio.run(fairness(one, args.flood, args.small, dept))
                spans = ledger.latest(SpanFilter(since=since), 100_000)
                small = [
                    s.queue_ns / 1e6 for s in spans if s.user == "small" and s.queue_ns is not None
                ]
                service = statistics.median(
                    (s.latency_ns - s.queue_ns) / 1e6 for s in spans if s.queue_ns is not None
                )
                print(
                    f"  {label:10} small department's wait p50 {pct(small, 50):7.1f} ms  "
                    f"p95 {pct(small, 95):7.1f} ms  (one call's service {service:.0f} ms)"
                )
        finally:
            for proc in procs:
                proc.terminate()  # type: ignore[attr-defined]
            for proc in procs:
                proc.wait(timeout=30)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
