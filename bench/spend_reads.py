"""CPU per spend read from rollups: a budget renewal's, a report's, ``budget status``'s.

On ``bench/scale.py``'s ledger of --spans spans (60 days to --end, Europe/Berlin, its 25
budgets), made in --dir or the one there reused, or a ledger at --db (PostgreSQL: an empty
database gets the same spans imported). Each read is run --reads times in one process after a
warm-up; printed: CPU (process time) and wall time per read, medians of --rounds.

  gate spend read   what a budget renewal reads for a department's monthly budget
                    (``_budgets.spent``, in the renewal's transaction)
  renewal holds     what the same renewal reads of others' leases (``BudgetTables.held``)
  report            ``ometer report --period month --by department``
  budget status     ``ometer budget status`` (25 budgets, three periods)
  and other readers of rollup cells: ``chargeback --month`` of the month before, ``perf --by
  model``, what ``/api/dash?period=month`` computes

  python bench/spend_reads.py [--spans 20000] [--reads 300] [--rounds 3] [--dir DIR] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import TZ, answers, budgets, export_file, load
from ollama_meter.ledger import Ledger, import_lines
from ollama_meter.periods import current_period
from ollama_meter.records import LeaseKey

READS = (
    "report --period month --by department",
    "budget status",
    "chargeback --month",
    "perf --by model",
    "/api/dash?period=month",
)
"""Of ``bench/scale.py``'s answers, those timed here."""


def ledger_at(args: argparse.Namespace) -> Ledger:
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.db is None:
        return load(args.dir, args.spans, args.end, "spend reads", reuse=True)[0]
    ledger = Ledger(args.db, zone=TZ.key)
    if ledger.count() == 0:
        for budget in budgets():
            ledger.save_budget(budget)
        with export_file(args.dir, args.spans, args.end).open("rb") as lines:
            import_lines(ledger, lines)
    return ledger


def per_read(action: Callable[[], object], reads: int) -> tuple[float, float]:
    """CPU and wall ms per read."""
    action()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(reads):
        action()
    return (
        (time.process_time() - cpu) / reads * 1000,
        (time.perf_counter() - wall) / reads * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--end", type=datetime.fromisoformat, default="2026-12-07T06:00+00:00")
    parser.add_argument("--db", help="a ledger URL (default: a SQLite file in --dir)")
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ometer-scale"
    )
    args = parser.parse_args()
    args.end = args.end.astimezone(UTC)
    ledger = ledger_at(args)
    now = args.end - timedelta(minutes=7)
    budget = next(b for b in ledger.budgets() if b.department == "dept03")
    window = current_period("month", tz=TZ, now=now)
    key = LeaseKey(budget.id or 0, "acme", window.start)
    figures: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        with ledger.budget_transaction() as store:
            renewal: dict[str, Callable[[], object]] = {
                "gate spend read": lambda: store.spent(budget, "acme", window.start, window.end),
                "renewal holds": lambda: store.held(key, now, exclude=["one", "two"]),
            }
            for name, action in renewal.items():
                figures.setdefault(name, []).append(per_read(action, args.reads))
        reads = {name: action for name, action in answers(ledger, now).items() if name in READS}
        for name, action in reads.items():
            figures.setdefault(name, []).append(per_read(action, args.reads))
    print(f"| read ({ledger.engine.dialect.name}, {args.spans:,} spans) | CPU ms | wall ms |")
    print("|---|---|---|")
    for name, runs in figures.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"| {name} | {cpu:.3f} | {wall:.3f} |")


if __name__ == "__main__":
    main()
