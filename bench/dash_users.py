"""``/api/dash?period=month`` with many users: the first and second answer, in-process and
through a real gateway.

Generates ``bench/scale.py``'s ledger (60 days of calls ending now, 20 departments in two
tenants, six models, Europe/Berlin), its calls spread over ``--users`` users, imports it
into a fresh SQLite ledger, then:

  in-process  a fresh process that holds only the ledger computes the dashboard's report
              and its JSON (as a poll its 3 s cache cannot answer does): the first time,
              then the median of --runs more
  gateway     ``ometer serve`` on the ledger: the first ``GET /api/dash?period=month``
              after it starts, then the median of --runs more, each after the gateway's
              3 s cache has let the last one go

    python bench/dash_users.py [--users 20000] [--spans 200000] [--runs 3] [--dir DIR]
                               [--reuse] [--profile] [--against CHECKOUT]

``--profile`` prints the first in-process answer's cProfile (top 25 by cumulative time).
``--against`` measures another checkout's code too (say ``git worktree add ../main main``),
each measurement of one right after the same of the other: the baseline a change is
judged against on a machine whose load moves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# The code measured: this checkout's, or in a child of --against, that checkout's (whose
# bench/ may not hold what this one imports: the child imports ollama_meter alone).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if code := os.environ.get("OMETER_BENCH_CODE"):
    sys.path.insert(0, code)

from zoneinfo import ZoneInfo

import httpx

from ollama_meter.ledger import Ledger, import_lines
from ollama_meter.reports import DashQuery, dashboard_report
from ollama_meter.testing import unused_port

TZ = ZoneInfo("Europe/Berlin")  # bench/scale.py's (a child imports no bench module: see above)

CACHE_S = 3.2
"""A little past the gateway's cache of the dashboard's figures (``DASH_CACHE_SECONDS``)."""


def build(directory: Path, spans: int, users: int, end: datetime) -> Path:
    from bench.scale import export_file, ledger_path

    source = export_file(directory, spans, end, users)
    path = ledger_path(directory, spans, users)
    for stale in directory.glob(f"{path.name}*"):
        stale.unlink()
    ledger = Ledger(f"sqlite:///{path}", zone=TZ.key)
    began = time.perf_counter()
    with source.open("rb") as lines:
        import_lines(ledger, lines)
    ledger.dispose()
    print(f"imported {spans:,} spans in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return path


def child(db: str, end: datetime, runs: int, profile: bool) -> None:
    """Wall and CPU seconds of the report and its JSON, the first and the median of ``runs``
    more, printed as JSON."""
    ledger = Ledger(db)

    def answer() -> None:
        dashboard_report(ledger, DashQuery(period="month"), tz=TZ, now=end).to_json()

    def timed(action: Callable[[], None]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        return time.perf_counter() - wall, time.process_time() - cpu

    if profile:
        import cProfile
        import pstats

        with cProfile.Profile() as profiler:
            first = timed(answer)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    else:
        first = timed(answer)
    then = [timed(answer) for _ in range(runs)]
    print(json.dumps([*first, *(statistics.median(t[i] for t in then) for i in (0, 1))]))


def in_process(path: Path, end: datetime, args: argparse.Namespace, code: str) -> list[float]:
    """First and median-of-``runs`` seconds in a fresh process running ``code``'s checkout."""
    command = [sys.executable, __file__, "--child", f"sqlite:///{path}", "--end", end.isoformat()]
    command += ["--runs", str(args.runs), *(["--profile"] if args.profile else [])]
    env = {**os.environ, "OMETER_BENCH_CODE": code}
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, env=env)
    result: list[float] = json.loads(done.stdout)
    return result


def gateway(path: Path, end: datetime, runs: int, code: str) -> list[float]:
    """Wall seconds of ``GET /api/dash?period=month`` from a gateway running ``code``'s
    checkout, and the gateway's CPU seconds for it: the first, and the median of ``runs``."""
    from bench.gateway import cpu_seconds, start

    port = unused_port()
    env = {
        **os.environ,
        "PYTHONPATH": code,
        "OMETER_DB_URL": f"sqlite:///{path}",
        "OMETER_TIMEZONE": TZ.key,
        "OLLAMA_HOST": f"http://127.0.0.1:{unused_port()}",  # nothing there (/healthz: 503)
    }
    url = f"http://127.0.0.1:{port}"
    proc = start(["ollama_meter", "serve", "--port", str(port)], f"{url}/metrics", env, module=True)
    try:
        times = []
        for _ in range(runs + 1):
            wall, cpu = time.perf_counter(), cpu_seconds(proc.pid)
            reply = httpx.get(f"{url}/api/dash?period=month", timeout=120)
            times.append((time.perf_counter() - wall, cpu_seconds(proc.pid) - cpu))
            reply.raise_for_status()
            time.sleep(CACHE_S)
        then = times[1:]
        return [*times[0], *(statistics.median(t[i] for t in then) for i in (0, 1))]
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ometer-scale"
    )
    parser.add_argument("--reuse", action="store_true", help="answer from the last run's ledger")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--against", type=Path, help="another checkout to measure beside")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args()
    end = (
        datetime.fromisoformat(args.end)
        if args.end
        else datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    )
    if args.child:
        child(args.child, end, args.runs, args.profile)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    from bench.scale import ledger_path

    path = ledger_path(args.dir, args.spans, args.users)
    if not (args.reuse and path.exists()):
        path = build(args.dir, args.spans, args.users, end)
    here = str(Path(__file__).resolve().parents[1])
    codes = {"this checkout": here}
    if args.against:
        codes[str(args.against)] = str(args.against.resolve())
    figures: dict[str, list[float]] = {}
    for name, code in codes.items():
        figures[f"in-process (report and JSON), {name}"] = in_process(path, end, args, code)
    for name, code in codes.items():
        figures[f"through `ometer serve`, {name}"] = gateway(path, end, args.runs, code)
    print(f"\n{args.spans:,} spans, {args.users:,} users; SQLite, Europe/Berlin\n")
    print("| `/api/dash?period=month` | first | then (median) | CPU: first | CPU: then |")
    print("|---|---|---|---|---|")
    for name, (first, first_cpu, then, then_cpu) in figures.items():
        shown = (f"{s * 1000:.0f} ms" for s in (first, then, first_cpu, then_cpu))
        print(f"| {name} | {' | '.join(shown)} |")


if __name__ == "__main__":
    main()
