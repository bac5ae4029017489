"""How long a gateway's span write waits while ``ometer db rollup`` rebuilds a busy day.

Builds a SQLite ledger with ``--spans`` calls in one day (bench/scale.py's traffic, squeezed
into a day), then rebuilds its rollups while another process records one span at a time
(a gateway's write: one call, one transaction) and prints how long each write waited:

    python bench/rebuild_lock.py --spans 100000          # rollups kept as spans arrived
    python bench/rebuild_lock.py --spans 100000 --stale  # none: spans loaded outside ometer

The writer is given a wait far past ``OMETER_LEDGER_WAIT``, so a write that would have gone
to the spool is still timed: the longest wait is the one to compare with 5 s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import generate
from ollama_meter.ledger import Ledger, rebuild
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, ROLLUPS
from ollama_meter.records import new_span_row_id

DAY = datetime(2026, 11, 10, tzinfo=UTC)


def busy_day(count: int) -> list[Any]:
    """``count`` calls of bench/scale.py's mix, all started on :data:`DAY`."""
    spans = []
    for n, span in enumerate(generate(count, DAY + timedelta(days=60))):
        started = DAY + timedelta(microseconds=(n * 86_400 * 10**6) // count)
        spans.append(
            replace(
                span,
                id=new_span_row_id(int(started.timestamp() * 10**9)),
                started_at=started,
                ended_at=started + (span.ended_at - span.started_at),
            )
        )
    return spans


def writer(url: str, go: Any, stop: Any, waits: Any) -> None:
    ledger = Ledger(url, wait=600)
    spans = busy_day(400)
    go.wait()
    n = 0
    while not stop.is_set():
        span = spans[n % len(spans)]
        at = span.started_at + timedelta(microseconds=n)
        span = replace(span, id=new_span_row_id(int(at.timestamp() * 10**9)), started_at=at)
        began = time.perf_counter()
        ledger.record([span])
        waits.append(time.perf_counter() - began)
        n += 1
        time.sleep(0.01)
    ledger.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=75_000)
    parser.add_argument(
        "--stale",
        action="store_true",
        help="delete the rollups first (spans loaded outside ometer)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        ledger = Ledger(url)
        spans = busy_day(args.spans)
        for at in range(0, len(spans), 5000):
            ledger.record(spans[at : at + 5000])
        if args.stale:
            with ledger.write() as conn:
                for table in (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
                    conn.execute(table.delete())
        context = multiprocessing.get_context("spawn")
        manager = context.Manager()
        go, stop, waits = context.Event(), context.Event(), manager.list()
        process = context.Process(target=writer, args=(url, go, stop, waits))
        process.start()
        go.set()
        while len(waits) < 100:  # the writer's waits with no rebuild running
            time.sleep(0.1)
        quiet = list(waits)
        began = time.perf_counter()
        rebuild(ledger.write, ledger.read)
        took = time.perf_counter() - began
        stop.set()
        process.join()
        during = list(waits)[len(quiet) :]
        what = "no rollups" if args.stale else "rollups kept as they arrived"
        print(f"{args.spans:,} spans in one day, {what}: rebuild {took:.1f} s")
        for name, values in (("quiet", quiet), ("during the rebuild", during)):
            print(
                f"  writes {name}: {len(values)}, median {statistics.median(values) * 1000:.1f} ms, "
                f"longest {max(values) * 1000:.0f} ms"
            )
        ledger.dispose()


if __name__ == "__main__":
    main()
