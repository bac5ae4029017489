"""How long callers wait while another session holds the rollups lock of a PostgreSQL ledger.

OMETER_LEDGER_WAIT (5 s by default) is the most a call should wait for a locked ledger
before its span goes to the spool. Two cases, each timed end to end:

- gateway: ``ometer serve`` is given one call, whose commit then waits for the lock,
  and 254 more (the write-behind backlog all but fills); then ``--past`` calls at once,
  all but the first of which commit their own spans (past the backlog). Prints each past call's time and the
  wall time of them all, and checks that every call's span reaches the ledger once the
  lock is released and the gateway stopped;
- chat: ``ometer chat`` with one span spooled by an earlier process (its open records
  the spool), timed as a process.

    python bench/locked_wait.py [--past 16] [--runs 3] [--against OTHER/.venv/bin/python]
                                [--sqlite]

A private PostgreSQL cluster is made with the machine's initdb (tests/_pg.py), or give
``OMETER_TEST_PG_URL``; ``--sqlite``: a SQLite file whose write lock another connection
holds instead. ``--against`` runs the same cases with another install's ometer
(a checkout of the commit before a change) in the same run, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import start
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._rollup import REBUILD_LOCK
from ollama_meter.testing import unused_port
from tests._pg import postgres_server
from tests.factories import make_span

BODY = {
    "model": "llama3.1:8b",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": False,
}
BACKLOG = 256  # ollama_meter.meter._behind.MOST_WAITING
FILL = BACKLOG - 2
"""Calls sent one by one after the first: one short of the backlog, which sometimes counts one
span more (the first's commit, maybe with the warm-up's): the 256th was then past it alone."""


def fresh_database(server: str) -> str:
    """A new ledger on ``server`` (a PostgreSQL URL without a database), or a new SQLite file
    for ``sqlite``."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    if server == "sqlite":
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='ometer-locked-')) / 'ledger.db'}"
    else:
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = f"{server}/{name}"
    Ledger(url, zone="UTC").dispose()  # made (its zone too, as ometer would) before the lock
    return url


class Holder:
    """Another session holding the rollups lock (a rebuild's) until released; on SQLite, the
    write lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, url: str) -> None:
        self.sqlite: sqlite3.Connection | None = None
        if url.startswith("sqlite"):
            self.sqlite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")
            return
        self.engine = create_engine(url)
        self.conn = self.engine.connect()
        self.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REBUILD_LOCK})

    def release(self) -> None:
        if self.sqlite is not None:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
            return
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


async def past_the_backlog(gateway: str, past: int) -> tuple[list[float], float]:
    async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
        (await client.post("/api/chat", json=BODY)).raise_for_status()
        await asyncio.sleep(0.3)  # its commit now waits for the lock
        filling = time.perf_counter()
        slow = []
        for n in range(FILL):
            began = time.perf_counter()
            (await client.post("/api/chat", json=BODY)).raise_for_status()
            if (took := time.perf_counter() - began) > 1:
                slow.append(f"call {n + 2}: {took:.2f} s")
        print(f"  the backlog's {FILL} calls: {time.perf_counter() - filling:.2f} s {slow}")

        async def one() -> float:
            began = time.perf_counter()
            (await client.post("/api/chat", json=BODY)).raise_for_status()
            return time.perf_counter() - began

        began = time.perf_counter()
        times = await asyncio.gather(*(one() for _ in range(past)))
        return list(times), time.perf_counter() - began


def gateway_case(server: str, python: str, emulator: str, past: int) -> tuple[list[float], float]:
    url = fresh_database(server)
    port = unused_port()
    gateway = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="ometer-locked-"))
    env = {**os.environ, "OMETER_DB_URL": url, "XDG_DATA_HOME": str(folder)}
    serve = start(
        ["ollama_meter", "serve", "--port", str(port), "--upstream", emulator],
        f"{gateway}/healthz",
        env,
        python=python,
    )
    try:
        httpx.post(f"{gateway}/api/chat", json=BODY, timeout=60).raise_for_status()
        holder = Holder(url)
        try:
            found = asyncio.run(past_the_backlog(gateway, past))
        finally:
            holder.release()
    finally:
        serve.terminate()
        serve.wait()
    os.environ["XDG_DATA_HOME"] = str(folder)  # its spool: opening the ledger records it
    ledger = Ledger(url)
    recorded, made = ledger.count(), 2 + FILL + past
    ledger.dispose()
    if recorded != made:
        raise SystemExit(f"{made} calls, {recorded} spans in the ledger: spans lost")
    return found


def chat_case(server: str, python: str, emulator: str) -> float:
    url = fresh_database(server)
    folder = Path(tempfile.mkdtemp(prefix="ometer-locked-"))
    env = {
        **os.environ,
        "OMETER_DB_URL": url,
        "XDG_DATA_HOME": str(folder),
        "OLLAMA_HOST": emulator,
    }
    os.environ["XDG_DATA_HOME"] = str(folder)  # the spool folder the command's ometer uses
    earlier = Ledger(url, migrate=False)
    earlier.spool.put([make_span(department="sales")])
    earlier.dispose()
    holder = Holder(url)
    try:
        began = time.perf_counter()
        chat = subprocess.run(
            [python, "-m", "ollama_meter", "chat", "--dept", "ops", "-m", "llama3.1:8b", "hi"],
            env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        if chat.returncode != 0:
            raise SystemExit(f"ometer chat failed ({chat.returncode}): {chat.stderr}")
        return time.perf_counter() - began
    finally:
        holder.release()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--past", type=int, default=16, help="calls past the backlog")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="PYTHON", help="another install's Python")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite ledger, write-locked")
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="OMETER_LEDGER_WAIT: longer than filling the backlog takes (on a busy machine, "
        "SQLite's 255 calls took 4.7 s: the first commit's wait was over as the others came)",
    )
    args = parser.parse_args()
    os.environ["OMETER_LEDGER_WAIT"] = f"{args.wait:g}"
    emu_port = unused_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    emu = start(["ollama_meter.testing", "--port", str(emu_port)], f"{emulator}/api/version")
    installs = {"this": sys.executable, **({"against": args.against} if args.against else {})}
    found: dict[str, dict[str, list[float]]] = {name: {} for name in installs}
    try:
        with contextlib.nullcontext("sqlite") if args.sqlite else postgres_server() as server:
            if server is None:
                raise SystemExit("no PostgreSQL server (initdb) and no OMETER_TEST_PG_URL")
            for run in range(args.runs):
                for name, python in installs.items():
                    times, wall = gateway_case(server, python, emulator, args.past)
                    chat = chat_case(server, python, emulator)
                    print(
                        f"run {run + 1} {name}: {args.past} calls past the backlog: longest "
                        f"{max(times):.2f} s, median {statistics.median(times):.2f} s, all "
                        f"{wall:.2f} s; ometer chat with a span spooled: {chat:.2f} s"
                    )
                    for key, value in (("longest", max(times)), ("wall", wall), ("chat", chat)):
                        found[name].setdefault(key, []).append(value)
    finally:
        emu.terminate()
        emu.wait()
    for name, figures in found.items():
        said = ", ".join(f"{k} median {statistics.median(v):.2f} s" for k, v in figures.items())
        print(f"{name} ({installs[name]}): {said}")


if __name__ == "__main__":
    main()
