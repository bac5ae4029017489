"""Spans per second through the meter's write path (GroupCommitWriter → Ledger.record).

Runs each scenario several times on a fresh ledger and prints the median:

  single        1 process, 1 thread: one transaction per span (what one `ometer chat` does)
  threads       1 process, T threads sharing a GroupCommitWriter (the gateway has 64)
  processes     P processes x T threads, each process with its own writer, one ledger file
  bulk          one transaction of N spans: the ceiling the database allows, for comparison

    python bench/ledger_write.py [--spans 20000] [--threads 64] [--processes 4] [--db URL]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ollama_meter.ledger import Ledger
from ollama_meter.meter import GroupCommitWriter
from tests.factories import make_span


def _threads_run(url: str, spans: int, threads: int) -> float:
    ledger = Ledger(url)
    writer = GroupCommitWriter(ledger)
    records = [make_span() for _ in range(spans)]
    chunks = [records[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=lambda c=c: [writer.write(s) for s in c]) for c in chunks]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    ledger.dispose()
    return elapsed


def _process_main(url: str, spans: int, threads: int, barrier: object, out: object) -> None:
    ledger = Ledger(url)
    writer = GroupCommitWriter(ledger)
    records = [make_span() for _ in range(spans)]
    chunks = [records[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=lambda c=c: [writer.write(s) for s in c]) for c in chunks]
    barrier.wait()  # type: ignore[attr-defined]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((start, time.perf_counter()))  # type: ignore[attr-defined]


def _processes_run(url: str, spans: int, processes: int, threads: int) -> float:
    Ledger(url).dispose()  # migrate once up front
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=(url, spans // processes, threads, barrier, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(end for _, end in times) - min(start for start, _ in times)


def _bulk_run(url: str, spans: int) -> float:
    ledger = Ledger(url)
    records = [make_span() for _ in range(spans)]
    start = time.perf_counter()
    ledger.record(records)
    elapsed = time.perf_counter() - start
    ledger.dispose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", help="ledger URL (default: a fresh SQLite file per run)")
    args = parser.parse_args()

    def url_for(run: int, name: str) -> str:
        if args.db:
            return args.db
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix='ometer-bench-')) / f'{name}-{run}.db'}"

    single_spans = max(1, args.spans // 10)  # one commit per span is slow: measure fewer
    scenarios = {
        "single (1 proc, 1 thread)": (single_spans, lambda u: _threads_run(u, single_spans, 1)),
        f"threads (1 proc, {args.threads} threads)": (
            args.spans,
            lambda u: _threads_run(u, args.spans, args.threads),
        ),
        f"processes ({args.processes} procs x {args.threads} threads)": (
            args.spans,
            lambda u: _processes_run(u, args.spans, args.processes, args.threads),
        ),
        "bulk (1 transaction)": (args.spans, lambda u: _bulk_run(u, args.spans)),
    }
    print(f"ledger write path, median of {args.repeat} runs, {args.db or 'SQLite file (WAL)'}")
    print(f"{'scenario':<40} {'spans':>8} {'median s':>9} {'spans/s':>10}")
    baseline = None
    for name, (count, run) in scenarios.items():
        elapsed = statistics.median(run(url_for(i, name.split()[0])) for i in range(args.repeat))
        rate = count / elapsed
        baseline = baseline or rate
        print(
            f"{name:<40} {count:>8} {elapsed:>9.3f} {rate:>10,.0f}   x{rate / baseline:.1f} vs single"
        )


if __name__ == "__main__":
    main()
