"""A flood of refused calls against the other departments' calls on one gateway, same run.

One emulator, one gateway (``ometer serve``, SQLite ledger). Department ``spent`` has a hard
monthly budget it has used up (every call is refused, 429); ``free`` has no budget and
``capped`` a hard one far above what the run spends. Interleaved rounds time sequential
calls of ``free`` and ``capped`` alone, during a paced flood (``--rate`` refused calls a
second, the same load for any build) and during a flood of 32 callers each sending again as
soon as refused (as fast as the gateway refuses), the flood from a process of its own; and
print p50/p99 of each. A flood on its own then counts what each refused call costs: the
gateway's CPU, and the ledger's transactions begun (reads and writes), write transactions
(SQLite's ``BEGIN IMMEDIATE``, each holding the database's one write lock) and commits, from
the gateway process (it runs with a SQLAlchemy listener counting them).

    python bench/refusals.py [--rounds 3] [--sequential 200] [--rate 100] [--flood 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import BODY, cpu_seconds, pct, start
from ollama_meter.testing import unused_port

OTHERS = ("free", "capped")


def counted_serve(out: Path, args: list[str]) -> None:
    """Run ``ometer`` (``args``) counting the ledger's transactions into ``out`` (JSON, every
    0.1 s): ``begin`` every transaction, ``write`` those that take the write lock."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts = {"begin": 0, "write": 0, "commit": 0}

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.startswith("BEGIN"):
            counts["begin"] += 1
            counts["write"] += statement == "BEGIN IMMEDIATE"

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        counts["commit"] += 1

    def dump() -> None:
        while True:
            out.with_suffix(".tmp").write_text(json.dumps(counts))
            out.with_suffix(".tmp").replace(out)
            time.sleep(0.1)

    threading.Thread(target=dump, daemon=True).start()
    sys.argv = ["ometer", *args]
    from ollama_meter.__main__ import main

    main()


def counts(path: Path) -> dict[str, int]:
    time.sleep(0.3)  # the gateway dumps every 0.1 s
    return dict(json.loads(path.read_text()))


async def flood(
    url: str, stop: asyncio.Event, concurrency: int, total: int | None, rate: float = 0
) -> int:
    """Refused calls of ``spent`` until ``stop`` (or ``total`` of them), ``concurrency`` at
    once, each sent as the one before is answered or (``rate``) that many a second; how many
    were sent."""
    headers = {"X-Ometer-Department": "spent", "X-Ometer-Tenant": "acme"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    sent = 0
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as client:

        async def one() -> None:
            async with client.post("/api/chat", json=BODY) as reply:
                await reply.read()
                assert reply.status == 429, await reply.text()

        async def worker() -> None:
            nonlocal sent
            while not stop.is_set() and (total is None or sent < total):
                sent += 1
                await one()

        if not rate:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return sent
        running: set[asyncio.Task[None]] = set()
        began = time.perf_counter()
        while not stop.is_set():
            if len(running) < concurrency:  # else this one is dropped: the rate is a ceiling
                task = asyncio.create_task(one())
                running.add(task)
                task.add_done_callback(running.discard)
            sent += 1
            await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
        await asyncio.gather(*running)
    return sent


def flooding(url: str, rate: float, ready: Any, stop: Any, rated: Any) -> None:
    """A process of its own sending refused calls from ``ready`` until ``stop`` is set, then
    how many a second in ``rated``: in the timing process, a fast flood's answers would delay
    the timed calls' own (one event loop)."""

    async def run() -> None:
        stopped = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.02)
            stopped.set()

        watching = asyncio.create_task(watch())
        ready.set()
        began = time.perf_counter()
        sent = await flood(url, stopped, 32, None, rate)
        rated.value = sent / (time.perf_counter() - began)
        await watching

    asyncio.run(run())


async def sequential(url: str, dept: str, n: int) -> list[float]:
    """``n`` calls of ``dept`` one after another: their times in ms."""
    headers = {"X-Ometer-Department": dept, "X-Ometer-Tenant": "acme"}
    times = []
    async with aiohttp.ClientSession(url, headers=headers) as client:
        for _ in range(n):
            start_ = time.perf_counter()
            async with client.post("/api/chat", json=BODY) as reply:
                await reply.read()
                assert reply.status == 200, await reply.text()
            times.append((time.perf_counter() - start_) * 1000)
    return times


def timed(url: str, dept: str, n: int, rate: float | None) -> tuple[list[float], float]:
    """:func:`sequential` during a flood (unless ``rate`` is None; 0: each of 32 callers sends
    as soon as refused); the times, and refused calls a second meanwhile."""
    if rate is None:
        return asyncio.run(sequential(url, dept, n)), 0.0
    spawn = multiprocessing.get_context("spawn")
    ready, stop, rated = spawn.Event(), spawn.Event(), spawn.Value("d", 0.0)
    process = spawn.Process(target=flooding, args=(url, rate, ready, stop, rated))
    process.start()
    ready.wait()
    time.sleep(0.3)  # the flood under way
    times = asyncio.run(sequential(url, dept, n))
    stop.set()
    process.join()
    return times, float(rated.value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-counted", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--flood", type=int, default=2000, help="refused calls counted")
    parser.add_argument(
        "--rate", type=float, default=100, help="refused calls a second in the paced flood"
    )
    args, rest = parser.parse_known_args()
    if args.serve_counted is not None:
        return counted_serve(args.serve_counted, rest)
    folder = Path(tempfile.mkdtemp(prefix="ometer-refusal-bench-"))
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{folder / 'ledger.db'}"}
    for setup in (
        ["pricing", "set", "*", "--input-per-1m", "0.1", "--output-per-1m", "0.2"],
        ["budget", "set", "capped", "--tenant", "acme", "--monthly", "1000000"],
        ["budget", "set", "spent", "--tenant", "acme", "--monthly", "0.000001"],
    ):
        subprocess.run([sys.executable, "-m", "ollama_meter", *setup], env=env, check=True,
                       capture_output=True)  # fmt: skip
    emu_port, gw_port = unused_port(), unused_port()
    emulator, gateway = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gw_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    tally = folder / "counts.json"
    serve = ["serve", "--port", str(gw_port), "--upstream", emulator]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-counted", str(tally), *serve],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(400):
        try:
            if httpx.get(f"{gateway}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    # None: no flood; 0: 32 callers each sending as soon as refused; else refused calls a second
    floods: dict[float | None, str] = {None: "alone", args.rate: f"{args.rate:.0f}/s", 0: "c=32"}
    times: dict[tuple[str, float | None], list[float]] = {
        (d, f): [] for d in OTHERS for f in floods
    }
    rates: dict[float | None, list[float]] = {f: [] for f in floods}
    try:
        for dept in OTHERS:  # warm up (the first lease, the budget cache, the refusal alert)
            timed(gateway, dept, 20, 0)
        for round_ in range(args.rounds):
            for dept in OTHERS if round_ % 2 == 0 else OTHERS[::-1]:
                for rate in floods:
                    took, refused = timed(gateway, dept, args.sequential, rate)
                    times[dept, rate] += took
                    rates[rate].append(refused)
        before, cpu = counts(tally), cpu_seconds(proc.pid)
        began = time.perf_counter()
        sent = asyncio.run(flood(gateway, asyncio.Event(), 32, args.flood))
        elapsed = time.perf_counter() - began
        after, cpu = counts(tally), cpu_seconds(proc.pid) - cpu
        print(f"{'sequential calls (ms), flood':<40} {'p50':>8} {'p99':>8} {'refused/s':>10}")
        for dept, label in (("free", "no budget"), ("capped", "hard budget, room left")):
            for rate, during in floods.items():
                values = times[dept, rate]
                print(
                    f"{f'{label}, {during}':<40} {statistics.median(values):>8.3f} "
                    f"{pct(values, 0.99):>8.3f} {statistics.median(rates[rate]):>10.0f}"
                )
        print(f"a flood alone: {sent} refused calls at concurrency 32, {sent / elapsed:.0f}/s")
        print(f"  gateway CPU per refused call: {cpu * 1000 / sent:.2f} ms")
        print("  per refused call: " + ", ".join(
            f"{what} {(after[what] - before[what]) / sent:.3f}" for what in ("begin", "write", "commit")
        ))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        emu.terminate()
        emu.wait(timeout=30)


if __name__ == "__main__":
    main()
