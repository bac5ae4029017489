"""Reports over windows far longer than their data: the work should follow the calls.

far     ``ometer report --since 1970-01-01 --until 9998-12-31`` over a ledger of two
        calls, one on 1970-01-02 and one on 9998-12-30: by day, week and month, by
        department alone, and by department and day as an HTML file; wall time and peak
        RSS of each command, in a fresh process, median of --runs
dash    what ``/api/dash`` computes over 20 years (``period=custom``) and for this month,
        in-process, median of --runs after one warm-up, on ``bench/scale.py``'s ledger of
        --spans spans over 60 days to 2026-12-01 (made in --dir, or the one there reused)

  python bench/sparse_windows.py [--runs 5] [--spans 200000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import load
from ollama_meter.ledger import Ledger
from ollama_meter.reports import DashQuery, dashboard_report
from tests.factories import make_span

FAR = {
    "--by day": ["--by", "day"],
    "--by week": ["--by", "week"],
    "--by month": ["--by", "month"],
    "--by department": [],
    "--by department,day --format html": ["--by", "department,day", "--format", "html"],
}


def far(directory: Path, runs: int) -> None:
    db = f"sqlite:///{directory / 'far.db'}"
    Ledger(db).record(
        [
            make_span(started_at=datetime(1970, 1, 2, 3, tzinfo=UTC), cost_total=5_000_000),
            make_span(started_at=datetime(9998, 12, 30, 12, tzinfo=UTC), cost_total=7_000_000),
        ]
    )
    ometer = Path(sys.executable).with_name("ometer")
    print("| `ometer report --since 1970-01-01 --until 9998-12-31` | wall s | peak RSS MB |")
    print("|---|---|---|")
    for name, options in FAR.items():
        walls, peaks = [], []
        for _ in range(runs):
            command = [str(ometer), "report", "--db", db, "--since", "1970-01-01"]
            command += ["--until", "9998-12-31", *options]
            began = time.perf_counter()
            done = subprocess.run(
                ["/usr/bin/time", "-f", "%M", *command],
                capture_output=True, text=True, check=True, env={**os.environ, "OMETER_TIMEZONE": "UTC"},
            )  # fmt: skip
            walls.append(time.perf_counter() - began)
            peaks.append(int(done.stderr.strip().splitlines()[-1]) / 1024)
        print(f"| `{name}` | {statistics.median(walls):.2f} | {statistics.median(peaks):.0f} |")


def dash(directory: Path, spans: int, runs: int) -> None:
    end = datetime(2026, 12, 1, tzinfo=UTC)
    ledger, _ = load(directory, spans, end, "dash", rebuilding=False, reuse=True)
    tz = ZoneInfo("Europe/Berlin")
    print(f"\n| `/api/dash` on {spans:,} spans (60 days) | median ms of {runs} |")
    print("|---|---|")
    for name, query in {
        "period=custom, 20 years": DashQuery(
            period="custom", since="2006-12-02", until="2026-11-30"
        ),
        "period=month": DashQuery(period="month"),
    }.items():
        dashboard_report(ledger, query, tz=tz, now=end).to_json()
        times = []
        for _ in range(runs):
            gc.collect()
            began = time.perf_counter()
            dashboard_report(ledger, query, tz=tz, now=end).to_json()
            times.append(time.perf_counter() - began)
        print(f"| {name} | {statistics.median(times) * 1000:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ometer-scale"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        far(Path(scratch), args.runs)
    args.dir.mkdir(parents=True, exist_ok=True)
    dash(args.dir, args.spans, args.runs)


if __name__ == "__main__":
    main()
