"""The gateway's cost: direct to the emulator vs through `ometer serve`, in the same run.

Measures, with the ledger on (a SQLite file) and the emulator at no artificial latency:
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ollama_meter.testing import OllamaEmulator, unused_port

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


def start_gateway(upstream: str, db: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = unused_port()
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ollama_meter",
            "serve",
            "--port",
            str(port),
            "--upstream",
            upstream,
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("gateway did not start")


def sequential(url: str, body: dict[str, object], n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):
            client.post("/api/chat", json=body).read()
        for _ in range(n):
            start = time.perf_counter()
            with client.stream("POST", "/api/chat", json=body) as reply:
                for _ in reply.iter_bytes():
                    pass
            times.append((time.perf_counter() - start) * 1000)
    return times


async def burst(url: str, total: int, concurrency: int) -> float:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                (await client.post("/api/chat", json=BODY)).raise_for_status()

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
    with OllamaEmulator() as emu:
        proc, gateway = start_gateway(emu.url, folder / "ledger.db")
        try:
            print(f"gateway {gateway} -> emulator {emu.url}; ledger {folder / 'ledger.db'}")
            print(f"\n{'sequential chat':<28} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10}")
            for label, body in (("non-streamed", BODY), ("streamed", STREAM)):
                direct = sequential(emu.url, body, args.sequential)
                through = sequential(gateway, body, args.sequential)
                for name, values in ((f"{label}, direct", direct), (f"{label}, gateway", through)):
                    added = statistics.median(values) - statistics.median(direct)
                    print(
                        f"{name:<28} {statistics.median(values):>8.3f} {pct(values, 0.99):>8.3f} {added:>10.3f}"
                    )
            print(f"\n{'throughput (non-streamed)':<28} {'req/s':>8}")
            for concurrency in (32, 64):
                for name, url in (("direct", emu.url), ("gateway", gateway)):
                    rate = asyncio.run(burst(url, args.burst, concurrency))
                    print(f"{f'c={concurrency}, {name}':<28} {rate:>8.0f}")
            print(f"\nRSS of the gateway process (MB) over {args.rss_requests} requests")
            done = 0
            samples = [(0, rss_mb(proc.pid))]
            step = max(args.rss_requests // 5, 1)
            while done < args.rss_requests:
                count = min(step, args.rss_requests - done)
                asyncio.run(burst(gateway, count, 32))
                done += count
                samples.append((done, rss_mb(proc.pid)))
            print("  " + "  ".join(f"{n}: {mb:.1f}" for n, mb in samples))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
