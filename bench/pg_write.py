"""A call's write to a PostgreSQL ledger: client CPU and wall time a call.

Each run is a fresh process on a fresh database that opens the ledger (migrations, untimed),
writes ``--warm`` calls, then times ``--calls`` more, one ``Ledger.record`` (one
transaction) each, as ``ometer chat`` or a gateway's lone call does: the span, its rollup
sums, histogram bins, busy minutes and model history. Besides the client's CPU and the wall
time, the CPU the server's processes for the run's database used (read from ``/proc``: a
local server), which moves less with the load than the wall time. The calls are the same in every run
(seeded): four departments in two tenants, three models, a dozen users, two hosts, over the
last two hours, with every duration a gateway measures.

    python bench/pg_write.py [--calls 500] [--warm 50] [--rounds 8] [--against CHECKOUT]
                             [--db URL]

``--against`` runs another checkout's code in the same rounds, interleaved (A B, then B A),
and prints the medians of both: on a machine whose load moves, the baseline a change is
judged against. A private cluster is made with the machine's initdb (tests/_pg.py, put
PostgreSQL's ``bin`` on PATH), or give ``--db`` (a server URL without a database; each run
makes a database there and drops it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The code measured: this checkout's, or in a child of --against, that checkout's (whose
# bench/ may not hold this file's imports: the child imports ollama_meter alone).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if code := os.environ.get("OMETER_BENCH_CODE"):
    sys.path.insert(0, code)

from sqlalchemy import create_engine, text

HOSTS = ("http://gpu-1:11434", "http://gpu-2:11434")
MODELS = ("llama3.1:8b", "qwen2.5:14b", "nomic-embed-text")
PLACES = (("acme", "sales"), ("acme", "legal"), ("acme", "it"), ("beta", "research"))


def calls(count: int, end: datetime) -> list[dict[str, object]]:
    """``count`` calls' fields, the same for every run (seeded), in start order."""
    pick = random.Random(7)
    out = []
    for at in range(count):
        started = end - timedelta(hours=2) + timedelta(seconds=7200 * at / count)
        tenant, department = pick.choice(PLACES)
        prompt, output = pick.randint(5, 4000), pick.randint(1, 800)
        evals = output * pick.randint(8, 40) * 10**6
        latency = pick.randint(2 * 10**8, 2 * 10**10)
        out.append(
            {
                "started_at": started,
                "ended_at": started + timedelta(microseconds=latency // 1000),
                "tenant": tenant,
                "department": department,
                "user": f"user{pick.randint(1, 12)}",
                "upstream_host": pick.choice(HOSTS),
                "request_model": pick.choice(MODELS),
                "input_tokens": prompt,
                "output_tokens": output,
                "prompt_eval_duration_ns": prompt * 10**5,
                "eval_duration_ns": evals,
                "load_duration_ns": pick.choice((0, 0, 0, 3 * 10**9)),
                "total_duration_ns": latency - 10**6,
                "latency_ns": latency,
                "ttft_ns": latency // pick.randint(2, 20),
                "queue_ns": pick.randint(0, 5 * 10**6),
                "cost_total": pick.randint(0, 90_000),
                "cost_tokens": 0,
            }
        )
    return out


def server_cpu(ledger: Any) -> float:
    """CPU seconds the server's processes for this database have used (a local server)."""
    tick = os.sysconf("SC_CLK_TCK")
    with ledger.engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        used = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                used += int(fields[11]) + int(fields[12])  # utime, stime
    return used / tick


def child(url: str, count: int, warm: int) -> None:
    """Write ``warm`` calls, then time ``count`` more: prints [client CPU s, wall s, server
    CPU s] a call."""
    from ollama_meter.ledger import Ledger
    from ollama_meter.records import (
        SpanRecord,
        new_otel_span_id,
        new_span_row_id,
        new_trace_id,
    )

    ledger = Ledger(url)
    spans = []
    for fields in calls(warm + count, datetime.now(UTC)):
        started = fields["started_at"]
        assert isinstance(started, datetime)
        fields["cost_tokens"] = fields["cost_total"]
        spans.append(
            SpanRecord(
                id=new_span_row_id(int(started.timestamp() * 1e9)),
                trace_id=new_trace_id(),
                span_id=new_otel_span_id(),
                source="gateway",
                operation="chat",
                stream=True,
                currency="USD",
                unpriced=False,
                price_rule_id=1,
                **fields,  # type: ignore[arg-type]
            )
        )
    for span in spans[:warm]:
        ledger.record([span])
    served = server_cpu(ledger)
    cpu, wall = time.process_time(), time.perf_counter()
    for span in spans[warm:]:
        ledger.record([span])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    served = server_cpu(ledger) - served
    ledger.dispose()
    print(json.dumps([cpu / count, wall / count, served / count]))


def run(server: str, code: str, args: argparse.Namespace) -> list[float]:
    """One run of ``code``'s checkout on a fresh database of ``server``: [CPU, wall] a call."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        command = [sys.executable, __file__, "--child", f"{server}/{name}"]
        command += ["--calls", str(args.calls), "--warm", str(args.warm)]
        env = {**os.environ, "OMETER_BENCH_CODE": code}
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, env=env)
        result: list[float] = json.loads(done.stdout)
        return result
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(server: str, args: argparse.Namespace) -> None:
    here = str(Path(__file__).resolve().parents[1])
    codes = {"this checkout": here}
    if args.against:
        codes[str(args.against)] = str(args.against.resolve())
    figures: dict[str, list[list[float]]] = {name: [] for name in codes}
    loads = [os.getloadavg()[0]]
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {loads[0]:.1f}", file=sys.stderr)
    for round_ in range(args.rounds):
        order = list(codes.items())
        if round_ % 2:
            order.reverse()
        for name, code in order:
            figures[name].append(run(server, code, args))
            cpu, wall, served = figures[name][-1]
            print(
                f"round {round_ + 1}, {name}: {cpu * 1000:.3f} ms CPU, {wall * 1000:.3f} ms "
                f"wall, {served * 1000:.2f} ms server CPU",
                file=sys.stderr,
            )
        loads.append(os.getloadavg()[0])
    print(
        f"\n{args.rounds} rounds of {args.calls} calls, load average {min(loads):.1f} to ", end=""
    )
    print(f"{max(loads):.1f}, ended {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    print("| code | client CPU a call, median (range) | wall a call | server CPU a call |")
    print("|---|---|---|---|")
    for name, runs in figures.items():
        shown = []
        for column in (0, 1, 2):
            values = [r[column] * 1000 for r in runs]
            shown.append(
                f"{statistics.median(values):.3f} ms ({min(values):.3f} to {max(values):.3f})"
            )
        print(f"| {name} | {' | '.join(shown)} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--against", type=Path, help="another checkout to measure beside")
    parser.add_argument("--db", help="a PostgreSQL server's URL, without a database")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls, args.warm)
        return
    if args.db:
        measure(args.db.rstrip("/"), args)
        return
    from tests._pg import postgres_server

    with postgres_server() as server:
        if server is None:
            sys.exit("no PostgreSQL: put its bin folder on PATH (initdb, pg_ctl), or give --db")
        measure(server, args)


if __name__ == "__main__":
    main()
