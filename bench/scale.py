"""Answers that do not grow with the ledger: every report at N spans against the same at 20,000.

Generates a realistic ledger (60 days of calls ending now, 20 departments in two
tenants, 300 users, six models, three GPU hosts, Europe/Berlin) as an export file,
then in one run:

  import     ``ometer db import`` of the file into a fresh SQLite ledger (spans/s), and
             the floor: the same rows (spans, then rollups too) inserted raw with sqlite3
  rollup     ``ometer db rollup``: every rollup rebuilt from the raw spans
  size       bytes per span: spans table and indexes, rollups, file
  answers    each report's median over --runs at N spans and at --small spans (the
             ratio is the point: it should stay near 1), each ledger's in a fresh
             process that holds only it (as a gateway or a command does), after one
             warm-up call; and a raw GROUP BY over the spans as baseline
  memory     peak RSS of the fixed-cost chargeback and of perf, each in a fresh process

    python bench/scale.py [--spans 1000000] [--small 20000] [--runs 5] [--users 300] [--dir DIR]

The export files are kept in --dir and reused when present (generating 10M spans
takes minutes); ledgers are rebuilt every run, unless --reuse answers from the ones
an earlier run left (importing 10M spans takes about half an hour). Needs about 1.5 KB of disk per span
(export file and ledger).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from ollama_meter.budgets import Budget, budget_status
from ollama_meter.ledger import Ledger, import_lines, rebuild, span_to_dict
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import SpanRecord, new_span_row_id
from ollama_meter.reports import (
    DashQuery,
    chargeback,
    dashboard_report,
    perf_report,
    spend_report,
)

TZ = ZoneInfo("Europe/Berlin")
DAYS = 60
MODELS = [  # name, share, operation, priced by
    ("llama3.1:8b", 40, "chat", "tokens"),
    ("qwen2.5:7b", 20, "chat", "gpu"),
    ("mistral:7b", 15, "generate", "gpu"),
    ("llama3.3:70b", 10, "chat", "tokens"),
    ("nomic-embed-text", 10, "embed", None),
    ("gemma2:9b", 5, "chat", "gpu"),
]
HOSTS = ["http://gpu1.internal:11434", "http://gpu2.internal:11434", "http://gpu3.internal:11434"]
GOALS = {  # seconds at 10M spans, from the issue
    "report --period month --by department": 0.3,
    "report --by tenant,department,model": 0.3,
    "chargeback --month": 0.5,
    "chargeback --fixed-cost": 1.0,
    "budget status": 0.2,
    "/api/dash?period=month": 0.3,
    "perf --by model": 0.5,
}


# -- the data ----------------------------------------------------------------------------


def generate(count: int, end: datetime, seed: int = 7, users: int = 300) -> Iterator[SpanRecord]:
    """``count`` calls over the 60 days before ``end``, busier in (Berlin) working hours, by
    ``users`` users spread over the 20 departments."""
    rng = random.Random(seed)
    departments = [("acme", f"dept{i:02d}") for i in range(15)]
    departments += [("globex", f"team{i:02d}") for i in range(5)]
    people = [(departments[i % 20], f"user{i:03d}") for i in range(users)]
    weighted = [m for m in MODELS for _ in range(m[1])]
    start = end - timedelta(days=DAYS)
    span_us = DAYS * 86_400 * 10**6
    offsets = []
    while len(offsets) < count:  # working hours three times as likely as the night
        offset = rng.randrange(span_us)
        hour = (start + timedelta(microseconds=offset)).astimezone(TZ).hour
        if 8 <= hour < 19 or rng.random() < 1 / 3:
            offsets.append(offset)
    offsets.sort()
    for offset in offsets:
        started = start + timedelta(microseconds=offset)
        (tenant, department), user = rng.choice(people)
        model, _, operation, priced = rng.choice(weighted)
        roll = rng.random()
        status, error = "ok", None
        if roll < 0.02:
            status, error = "error", rng.choice(["upstream_5xx", "timeout", "connection"])
        elif roll < 0.025:
            status, error = "rejected", "budget_exceeded"
        elif roll < 0.03:
            status, error = "client_abort", "client_abort"
        ok = status == "ok"
        tokens_in = rng.randrange(20, 2000) if status != "rejected" else 0
        tokens_out = rng.randrange(10, 800) if ok and operation != "embed" else 0
        load = (
            rng.randrange(10**9, 3 * 10**9)
            if rng.random() < 0.01
            else rng.randrange(10**6, 5 * 10**6)
        )
        prompt_ns = tokens_in * rng.randrange(200_000, 400_000) if ok else None
        eval_ns = tokens_out * rng.randrange(15_000_000, 30_000_000) if ok else None
        total = load + (prompt_ns or 0) + (eval_ns or 0) + rng.randrange(2_000_000) if ok else None
        latency = (total or rng.randrange(10**6, 30 * 10**9)) + rng.randrange(300_000, 3_000_000)
        stream = operation == "chat" and rng.random() < 0.7
        cost_tokens = (tokens_in * 1000 + tokens_out * 2000) // 1000 if priced == "tokens" else 0
        cost_compute = ((prompt_ns or 0) + (eval_ns or 0)) // 10**6 if priced == "gpu" else 0
        yield SpanRecord(
            id=new_span_row_id(int(started.timestamp() * 10**9)),
            trace_id=rng.getrandbits(128).to_bytes(16, "big").hex(),
            span_id=rng.getrandbits(64).to_bytes(8, "big").hex(),
            started_at=started,
            ended_at=started + timedelta(microseconds=latency // 1000),
            tenant=tenant,
            department=department,
            user=None if rng.random() < 0.2 else user,
            source="gateway",
            operation=operation,
            upstream_host=rng.choice(HOSTS),
            request_model=model,
            response_model=model if ok else None,
            stream=stream,
            status=status,
            error_type=error,
            error_message=None if ok else "upstream said no",
            http_status=200 if ok else (429 if status == "rejected" else 502),
            done_reason="stop" if ok and operation != "embed" else None,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_duration_ns=total,
            load_duration_ns=load if ok else None,
            prompt_eval_duration_ns=prompt_ns,
            eval_duration_ns=eval_ns,
            duration_source="reported" if ok else None,
            latency_ns=latency,
            ttft_ns=load + (prompt_ns or 0) + rng.randrange(10**7, 4 * 10**7)
            if stream and ok
            else None,
            cost_tokens=cost_tokens,
            cost_compute=cost_compute,
            cost_total=cost_tokens + cost_compute,
            currency="USD",
            price_rule_id=1 if priced else None,
            unpriced=priced is None,
        )


def _named(count: int, users: int) -> str:
    """``count``, and the users when not the usual 300: each ledger's files of its own."""
    return f"{count}" if users == 300 else f"{count}-{users}u"


def ledger_path(directory: Path, count: int, users: int = 300) -> Path:
    return directory / f"ledger-{_named(count, users)}.db"


def export_file(directory: Path, count: int, end: datetime, users: int = 300) -> Path:
    path = directory / f"spans-{_named(count, users)}.jsonl"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text())["end"] == end.isoformat():
        return path
    encode = msgspec.json.Encoder().encode
    began = time.perf_counter()
    with path.open("wb") as out:
        for span in generate(count, end, users=users):
            out.write(encode(span_to_dict(span)) + b"\n")
    meta.write_text(json.dumps({"end": end.isoformat(), "spans": count}))
    print(
        f"generated {count:,} spans in {time.perf_counter() - began:.0f} s: {path}", file=sys.stderr
    )
    return path


def budgets() -> list[Budget]:
    """25 budgets, as the issue measured: each department, both tenants, three per-tenant."""
    out = [
        Budget(
            tenant=tenant,
            department=f"{prefix}{i:02d}",
            period="month",
            limit=10**9,
            currency="USD",
        )
        for tenant, prefix, n in (("acme", "dept", 15), ("globex", "team", 5))
        for i in range(n)
    ]
    out += [
        Budget(tenant=t, department=None, period="month", limit=10**10, currency="USD")
        for t in ("acme", "globex")
    ]
    out += [
        Budget(tenant="*", department=d, period=p, limit=10**8, currency="USD")
        for d, p in (("dept00", "day"), ("dept01", "week"), ("team00", "day"))
    ]
    return out


# -- measuring -----------------------------------------------------------------------------


def median_time(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def answers(ledger: Ledger, end: datetime) -> dict[str, Callable[[], object]]:
    month = parse_period("month", tz=TZ, now=end)
    last_month = parse_period("month", tz=TZ, now=month.start - timedelta(days=1)).label
    return {
        "report --period month --by department": lambda: spend_report(
            ledger, month, ["department"], tz=TZ
        ),
        "report --by tenant,department,model": lambda: spend_report(
            ledger, month, ["tenant", "department", "model"], tz=TZ
        ),
        "chargeback --month": lambda: chargeback(
            ledger, last_month, tz=TZ, now=end, currency="USD"
        ),
        "chargeback --fixed-cost": lambda: chargeback(
            ledger, last_month, tz=TZ, now=end, currency="USD", fixed_cost=Decimal(2400)
        ),
        "budget status": lambda: budget_status(ledger, tz=TZ, now=end),
        # what /api/dash computes for a poll its 3 s cache cannot answer
        "/api/dash?period=month": lambda: dashboard_report(
            ledger, DashQuery(period="month"), tz=TZ, now=end
        ).to_json(),
        "perf --by model": lambda: perf_report(ledger, month, ["model"]),
    }


def load(
    directory: Path,
    count: int,
    end: datetime,
    label: str,
    *,
    rebuilding: bool = True,
    reuse: bool = False,
    users: int = 300,
) -> tuple[Ledger, dict[str, float]]:
    source = export_file(directory, count, end, users)
    path = ledger_path(directory, count, users)
    if reuse and path.exists():
        began = time.perf_counter()
        ledger = Ledger(f"sqlite:///{path}")  # brought to the current schema, if it is behind
        print(f"{label}: reused {path} (opened in {time.perf_counter() - began:.1f} s)",
              file=sys.stderr)  # fmt: skip
        return ledger, sizes(ledger, count)
    for stale in directory.glob(f"{path.name}*"):
        stale.unlink()
    ledger = Ledger(f"sqlite:///{path}", zone=TZ.key)  # as OMETER_TIMEZONE makes it
    for budget in budgets():
        ledger.save_budget(budget)
    figures: dict[str, float] = {}
    began = time.perf_counter()
    with source.open("rb") as lines:
        summary = import_lines(ledger, lines)
    figures["import s"] = time.perf_counter() - began
    figures["import spans/s"] = summary.added / figures["import s"]
    figures.update(floor(ledger, directory / f"floor-{count}.db"))
    if rebuilding:
        began = time.perf_counter()
        rebuild(ledger.write, ledger.read)
        figures["rollup s"] = time.perf_counter() - began
    figures.update(sizes(ledger, count))
    print(
        f"{label}: imported {count:,} spans in {figures['import s']:.1f} s "
        f"({figures['import spans/s']:,.0f}/s; the same rows inserted raw: "
        f"{figures['floor: spans and rollup rows spans/s']:,.0f}/s, spans alone "
        f"{figures['floor: spans alone spans/s']:,.0f}/s), "
        f"rollup rebuilt in {figures.get('rollup s', 0):.1f} s",
        file=sys.stderr,
    )
    return ledger, figures


def floor(ledger: Ledger, path: Path, batch: int = 20_000) -> dict[str, float]:
    """What SQLite alone takes to store what the import stored: the same rows, raw.

    The imported ledger's rows go into a fresh ledger (same schema, indexes and pragmas)
    with plain ``executemany`` INSERTs, ``batch`` rows a transaction; only the inserts
    are timed. Spans alone, then the rollup rows too (each once: the import upserts
    some several times, so this is below what any import with rollups can reach).
    """
    import sqlite3

    for stale in path.parent.glob(f"{path.name}*"):
        stale.unlink()
    Ledger(f"sqlite:///{path}").dispose()
    assert ledger.path is not None
    source = sqlite3.connect(ledger.path)
    target = sqlite3.connect(path, isolation_level=None)
    target.execute("PRAGMA synchronous = NORMAL")
    took: dict[str, float] = {}
    spans = 0
    for table in ("spans", "rollups", "rollup_histograms", "rollup_busy"):
        rows = source.execute(f"SELECT * FROM {table}")
        width = len(rows.description)
        insert = f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"
        took[table] = 0.0
        while chunk := rows.fetchmany(batch):
            began = time.perf_counter()
            target.execute("BEGIN IMMEDIATE")
            target.executemany(insert, chunk)
            target.execute("COMMIT")
            took[table] += time.perf_counter() - began
            spans += len(chunk) if table == "spans" else 0
    source.close()
    target.close()
    return {
        "floor: spans alone spans/s": spans / took["spans"],
        "floor: spans and rollup rows spans/s": spans / sum(took.values()),
    }


def sizes(ledger: Ledger, count: int) -> dict[str, float]:
    """Bytes per span: the spans table with its indexes, the rollups, the whole file."""
    import sqlite3

    assert ledger.path is not None
    db = sqlite3.connect(ledger.path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    per_table: dict[str, int] = {}
    for name, size in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
        per_table[name] = size
    db.close()
    spans = sum(
        v
        for k, v in per_table.items()
        if k == "spans" or k.startswith(("ix_spans", "sqlite_autoindex_spans"))
    )
    rollups = sum(
        v for k, v in per_table.items() if k.startswith(("rollup", "sqlite_autoindex_rollup"))
    )
    return {
        "spans B/span": spans / count,
        "rollups B/span": rollups / count,
        "file B/span": ledger.path.stat().st_size / count,
    }


def peak_rss(db: str, what: str, end: datetime) -> float:
    """Peak RSS (MB) of a fresh process that answers ``what`` once."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, "--db", db, "--end", end.isoformat()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout.strip())


def timings(db: str, end: datetime, runs: int, *, baseline: bool) -> dict[str, list[float]]:
    """Name → [median s, raw GROUP BY s or 0] of every answer, timed in a fresh process that
    holds only this ledger (as a gateway or a command does), after one warm-up call."""
    command = [sys.executable, __file__, "--child", "timings", "--db", db, "--end", end.isoformat()]
    command += ["--runs", str(runs), *(["--baseline"] if baseline else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, list[float]] = json.loads(done.stdout)
    return result


def child(what: str, db: str, end: datetime, runs: int = 1, baseline: bool = False) -> None:
    ledger = Ledger(db)
    if what == "timings":
        result = {}
        for name, action in answers(ledger, end).items():
            action()
            raw = 0.0
            if baseline and name.startswith(("report", "budget")):
                with raw_spans():
                    raw = median_time(action, 1)
            result[name] = [median_time(action, runs), raw]
        print(json.dumps(result))
        return
    if what != "nothing":
        answers(ledger, end)[what]()
    # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across fork and exec.
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next((line.split()[1] for line in status if line.startswith("VmHWM:")), None)
    kib = int(peak) if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(kib / 1024)


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--users",
        type=int,
        default=300,
        help="users the calls are spread over (bench/dash_users.py: the dashboard at 20,000)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ometer-scale"
    )
    parser.add_argument("--end", help="the data's last instant (ISO); default: now, to the hour")
    parser.add_argument(
        "--skip-rebuild",
        action="store_true",
        help="do not time `ometer db rollup` at N spans (it grows with N: 100 s at 1M)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="answer from the ledgers an earlier run left in --dir (migrated if behind): "
        "no import, floor or rollup figures",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end = datetime.fromisoformat(args.end) if args.end else now
    if args.child:
        child(args.child, args.db, end, args.runs, args.baseline)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    small, small_figures = load(
        args.dir, args.small, end, "small", reuse=args.reuse, users=args.users
    )
    large, large_figures = load(
        args.dir,
        args.spans,
        end,
        "large",
        rebuilding=not args.skip_rebuild,
        reuse=args.reuse,
        users=args.users,
    )
    print(
        f"\nSQLite, Europe/Berlin, {args.users:,} users, data ending {end:%Y-%m-%d %H:%M} UTC; "
        f"medians of {args.runs} runs\n"
    )
    print(f"| | {args.small:,} spans | {args.spans:,} spans |")
    print("|---|---|---|")
    for key in (
        "import spans/s",
        "floor: spans and rollup rows spans/s",
        "floor: spans alone spans/s",
        "import s",
        "rollup s",
        "spans B/span",
        "rollups B/span",
        "file B/span",
    ):
        shown = [
            f"{f[key]:,.1f}" if key in f else "skipped" for f in (small_figures, large_figures)
        ]
        print(f"| {key} | {' | '.join(shown)} |")
    small.dispose()
    large.dispose()
    little = timings(f"sqlite:///{small.path}", end, args.runs, baseline=False)
    big = timings(f"sqlite:///{large.path}", end, args.runs, baseline=True)
    print(
        f"\n| answer | {args.small:,} spans | {args.spans:,} spans | ratio | raw GROUP BY at {args.spans:,} | goal at 10M |"
    )
    print("|---|---|---|---|---|---|")
    for name, (time_big, raw) in big.items():
        time_little = little[name][0]
        baseline = f"{raw:.3f} s" if raw else "-"
        goal = GOALS[name]
        print(
            f"| `{name}` | {time_little * 1000:.1f} ms | {time_big * 1000:.1f} ms "
            f"| {time_big / time_little:.2f}x | {baseline} "
            f"| < {goal} s {'ok' if time_big < goal else 'MISSED'} |"
        )
    db = f"sqlite:///{ledger_path(args.dir, args.spans, args.users)}"
    base = peak_rss(db, "nothing", end)
    print(f"\npeak RSS, a fresh process: opening the ledger {base:.0f} MB", end="")
    for what in ("chargeback --fixed-cost", "perf --by model"):
        print(f"; `{what}` {peak_rss(db, what, end):.0f} MB", end="")
    print()


if __name__ == "__main__":
    main()
