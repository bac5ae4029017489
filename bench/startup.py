"""How long ``ometer`` takes to start, against bare Python start-up in the same run.

Runs each command as a fresh process, in rounds so machine noise hits them alike,
and prints per command the median wall time and CPU time (user + system) and
what each adds over ``python -c pass``:

  python -c pass                      (the baseline)
  libraries alone                     (importing SQLAlchemy, pydantic-settings, Typer and
                                       rich, which a ledger command cannot skip; no command
                                       loads SQLAlchemy's ORM)
  ometer --help
  ometer log --limit 1                (a ledger of a month of demo calls)
  ometer report --period month
    the same, collector as default    (``ollama_meter.cli.main`` without the wrapper the
                                       console script runs it in: what that wrapper saves)

Bytecode is cached (in a temporary folder, as after ``pip install``), so the
figures are start-up, not compilation; the first round warms it and is not counted.

    python bench/startup.py [--runs 15] [--target 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import DEVNULL, PIPE

from ollama_meter._runtime import STARTING

LIBRARIES = (  # run as ``ometer`` runs (ollama_meter/__main__.py): no collection, none at exit
    f"import gc; gc.set_threshold({STARTING}); "
    "import sqlalchemy, pydantic_settings, typer.main, rich.console; gc.freeze()"
)
IN_PROCESS = "import sys; from ollama_meter.cli import main; sys.argv[0] = 'ometer'; main()"
"""The command line without its process wrapper: Python's collector as it comes."""
BASELINE = "python -c pass"
COMMANDS = {
    BASELINE: ["-c", "pass"],
    "libraries alone": ["-c", LIBRARIES],
    "ometer --help": ["--help"],
    "ometer log --limit 1": ["log", "--limit", "1"],
    "ometer report --period month": ["report", "--period", "month"],
    "  the same, collector as default": ["-c", IN_PROCESS, "report", "--period", "month"],
}
"""Name → arguments, to Python where they start with ``-c``, to ``ometer`` otherwise."""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run; a failed run stops the benchmark."""
    start = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=DEVNULL, stderr=PIPE) as proc:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {errors.decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="Counted runs of each command.")
    parser.add_argument(
        "--target", type=float, default=0.3, help="Seconds a command may add to bare Python."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ometer-startup-") as folder:
        run(Path(folder), args.runs, args.target)


def run(folder: Path, runs: int, target: float) -> None:
    """Fill a demo ledger in ``folder`` (bytecode is cached there too), then time the commands."""
    ometer = str(Path(sys.executable).with_name("ometer"))
    url = f"sqlite:///{folder / 'ledger.db'}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env |= {
        "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        "OMETER_DB_URL": url,
        "COLUMNS": "120",
    }
    timed([ometer, "demo", "--calls", "300", "--db", url], env)
    commands = {
        name: [sys.executable if argv[0] == "-c" else ometer, *argv]
        for name, argv in COMMANDS.items()
    }
    for command in commands.values():  # warm up: bytecode, the ledger's pages, the disk cache
        timed(command, env)
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            wall, cpu = timed(command, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    base_wall = statistics.median(walls[BASELINE])
    base_cpu = statistics.median(cpus[BASELINE])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{runs} runs each, interleaved; medians in seconds; load average {load}")
    print(f"{'command':<34} {'wall':>6} {'added':>6} {'cpu':>6} {'added':>6}  within {target} s")
    for name in commands:
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        verdict = ""
        if name.startswith("ometer"):
            verdict = "yes" if wall - base_wall <= target else "NO"
        print(
            f"{name:<34} {wall:>6.3f} {wall - base_wall:>6.3f} {cpu:>6.3f} {cpu - base_cpu:>6.3f}"
            f"  {verdict}"
        )


if __name__ == "__main__":
    main()
