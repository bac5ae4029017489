"""The gateway's cost: direct to the emulator vs through `ometer serve`, in the same run.

Three processes, so none measures the others' cost: the emulator (``python -m
ollama_meter.testing``, no artificial latency), the gateway (``ometer serve``, ledger
on, a SQLite file) and this load generator (aiohttp). It measures:
  - sequential latency, non-streamed and streamed chat: p50, p95, p99, added ms at p50 and p95,
    and each server's CPU a call (all its threads; its event loop's alone, to the nanosecond);
  - throughput at concurrency 32 and 64 (requests/s), direct and through the gateway (with
    ``--against``, the mean of each measured first once and second once);
  - the gateway process's RSS after N requests (default 50,000), sampled along the way.

    python bench/gateway.py [--sequential 500] [--burst 3000] [--rss-requests 50000]
                            [--against OTHER/.venv/bin/python] [--floor] [--body "agent chat"]

``--against`` runs a second gateway from another install (say a worktree of the last
release) in the same interleaved rounds: the baseline a change is judged against.
``--body`` sends one of ``bench/facts.py``'s chats (default the one-message chat): an agent's
(a system prompt, three tools, a tool call and its result) or a forty-turn one.
``--floor`` runs a bare relay (``bench/relay.py``: uvicorn and one pooled aiohttp client,
nothing else) in the same rounds: what any relay built on them adds.
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

from bench.callers import CHAT, ROUTES, Caller, caller_options, describe, prepare
from bench.facts import BODIES
from ollama_meter.testing import unused_port

BODY = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": False,
}
STREAM = {**BODY, "stream": True}
SETTLE_S = 0.5
"""The pause before each throughput burst: the last one's spans are written by then."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(
    args: list[str],
    ready: str,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    module: bool = True,
) -> subprocess.Popen[bytes]:
    # Run from a folder of no checkout: ``-m`` imports from the working directory first, and
    # each interpreter must run its own install's ometer.
    proc = subprocess.Popen(
        [python, *(["-m"] if module else []), *args],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    for _ in range(400):
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start")


async def sequential(
    url: str, body: dict[str, object], n: int, caller: Caller = CHAT
) -> list[float]:
    times = []
    async with aiohttp.ClientSession(url, headers=caller.headers) as client:
        for _ in range(20):
            async with client.post(caller.path, json=body) as reply:
                await reply.read()
        for _ in range(n):
            start = time.perf_counter()
            async with client.post(caller.path, json=body) as reply:
                async for _ in reply.content.iter_any():
                    pass
            times.append((time.perf_counter() - start) * 1000)
    return times


async def burst(
    url: str, body: dict[str, object], total: int, concurrency: int, caller: Caller = CHAT
) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=caller.headers) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                async with client.post(caller.path, json=body) as reply:
                    await reply.read()
                    reply.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_seconds(pid: int) -> float:
    """CPU time of process ``pid``'s first thread so far (the gateway's event loop), to the
    nanosecond: ``cpu_seconds`` counts in clock ticks (10 ms), a tenth of a round's time."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--rss-requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5, help="sequential rounds, interleaved")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds the emulator takes before each reply (a model's own time): the gateway's "
        "work after an answer (its span's commit) then overlaps the next call's wait",
    )
    parser.add_argument(
        "--against",
        metavar="PYTHON",
        help="the Python of another ometer install (another checkout's venv): its gateway "
        "runs beside this one, measured in the same rounds",
    )
    parser.add_argument("--body", choices=list(BODIES), default="short chat")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure a bare relay (bench/relay.py: uvicorn and aiohttp, nothing else)",
    )
    caller_options(parser)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ometer-gw-bench-"))
    emu_port = unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    emu = start(
        ["ollama_meter.testing", "--port", str(emu_port), "--latency", str(args.latency)],
        f"{emulator}/api/version",
    )
    gateways: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    callers: dict[str, Caller] = {"direct": Caller(path=ROUTES[args.route])}
    for name, python in (("gateway", sys.executable), ("against", args.against)):
        if python is None:
            continue
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        db_url = f"sqlite:///{folder / f'{name}.db'}"
        env = {**os.environ, "OMETER_DB_URL": db_url}
        callers[name] = caller = prepare(args, python, db_url)
        serve = ["ollama_meter", "serve", "--port", str(port), "--upstream", emulator]
        gateways[name] = (url, start([*serve, *caller.serve], f"{url}/healthz", env, python))
    if args.floor:
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        relay = [str(Path(__file__).with_name("relay.py")), str(port), emulator]
        gateways["floor"] = (url, start(relay, f"{url}/api/version", module=False))
        callers["floor"] = callers["direct"]
    whole = callers["direct"].body(BODIES[args.body], stream=False)
    bodies = (("non-streamed", whole), ("streamed", {**whole, "stream": True}))
    try:
        print(f"{describe(args)}; emulator {emulator}; ledgers in {folder}")
        for name, (url, proc) in gateways.items():
            print(f"  {name}: {url} (pid {proc.pid})")
        print(
            f"\n{'sequential chat':<28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'added p50':>10} "
            f"{'added p95':>10} {'CPU ms/call':>12} {'loop ms/call':>12}"
        )
        per_round = max(args.sequential // args.rounds, 1)
        for label, body in bodies:
            times: dict[str, list[float]] = {"direct": [], **{name: [] for name in gateways}}
            cpu, loop = dict.fromkeys(gateways, 0.0), dict.fromkeys(gateways, 0.0)
            for round_ in range(args.rounds):  # interleaved, so the machine's moods hit all alike
                times["direct"] += asyncio.run(
                    sequential(emulator, body, per_round, callers["direct"])
                )
                order = list(gateways.items())  # each gateway goes first every other round
                for name, (url, proc) in order[::-1] if round_ % 2 else order:
                    before, looped = cpu_seconds(proc.pid), loop_seconds(proc.pid)
                    times[name] += asyncio.run(sequential(url, body, per_round, callers[name]))
                    cpu[name] += cpu_seconds(proc.pid) - before
                    loop[name] += loop_seconds(proc.pid) - looped
            direct = statistics.median(times["direct"])
            direct_p95 = pct(times["direct"], 0.95)
            for name, values in times.items():
                used = cpu.get(name)
                calls = args.rounds * (per_round + 20)  # each round also sends 20 warm-up calls
                per_call = (
                    ""
                    if used is None
                    else f"{used * 1000 / calls:>12.3f} {loop[name] * 1000 / calls:>12.3f}"
                )
                p50, p95 = statistics.median(values), pct(values, 0.95)
                print(
                    f"{f'{label}, {name}':<28} {p50:>8.3f} {p95:>8.3f} {pct(values, 0.99):>8.3f} "
                    f"{p50 - direct:>10.3f} {p95 - direct_p95:>10.3f}{per_call}"
                )
        print(f"\n{'throughput':<28} {'req/s':>8} {'share':>8}")
        for label, body in bodies:
            for concurrency in (32, 64):
                direct_rate = asyncio.run(
                    burst(emulator, body, args.burst, concurrency, callers["direct"])
                )
                print(f"{f'{label}, c={concurrency}, direct':<28} {direct_rate:>8.0f}")
                # Each gateway measured first once and second once (A B B A), after a pause for
                # the last burst's spans to be written: the one measured right after another
                # shares the cores with that one's commits, and served up to 1.3 times less.
                rates: dict[str, list[float]] = {name: [] for name in gateways}
                order = list(gateways.items())
                for name, (url, _) in order + order[::-1]:
                    time.sleep(SETTLE_S)
                    rate = asyncio.run(burst(url, body, args.burst, concurrency, callers[name]))
                    rates[name].append(rate)
                for name, measured in rates.items():
                    rate = statistics.mean(measured)
                    print(
                        f"{f'{label}, c={concurrency}, {name}':<28} {rate:>8.0f} {rate / direct_rate:>8.2f}"
                    )
        url, proc = gateways["gateway"]
        print(f"\nRSS of the gateway process (MB) over {args.rss_requests} requests")
        done = 0
        samples = [(0, rss_mb(proc.pid))]
        step = max(args.rss_requests // 5, 1)
        while done < args.rss_requests:
            count = min(step, args.rss_requests - done)
            asyncio.run(burst(url, whole, count, 32, callers["gateway"]))
            done += count
            samples.append((done, rss_mb(proc.pid)))
        print("  " + "  ".join(f"{n}: {mb:.1f}" for n, mb in samples))
    finally:
        for running in (*(proc for _, proc in gateways.values()), emu):
            running.terminate()
            running.wait(timeout=30)


if __name__ == "__main__":
    main()
