"""``ometer demo``: the product working end to end with no Ollama installed."""

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from ollama_meter._paths import default_data_dir, resolved
from ollama_meter.cli._common import progress_bar, settings, utc_now
from ollama_meter.cli._console import err, out
from ollama_meter.cli.report import render_table
from ollama_meter.periods import window_between

DEMO_CALLS = 300


def demo(
    calls: Annotated[
        int, typer.Option("--calls", min=1, max=5000, help="How many calls to send.")
    ] = DEMO_CALLS,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Ledger URL to fill (default: a separate demo ledger, recreated)."
        ),
    ] = None,
) -> None:
    """Start an Ollama emulator, meter a month of realistic traffic, and show the report."""
    from ollama_meter.demo import run_demo  # loads the emulator only when asked
    from ollama_meter.ledger import close_ledger, open_ledger
    from ollama_meter.reports import spend_report

    path = default_data_dir() / "demo.db"
    url = f"sqlite:///{path}" if db is None else db
    cfg = settings(db_url=url)  # an empty --db is refused, not read as the demo ledger
    if db is None:
        close_ledger(f"sqlite:///{path}")
        path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    with progress_bar("metering demo calls", remaining=False) as bar:
        task = bar.add_task("demo", total=calls)
        summary = run_demo(cfg, calls=calls, progress=lambda: bar.advance(task))
    err.print(
        f"sent {summary.calls} calls through the meter to an Ollama emulator at {summary.upstream}: "
        f"{summary.ok} ok, {summary.errors} failed (on purpose), over the past 30 days"
    )
    # The days the calls were spread over, not this month: on the 1st that would be empty.
    first = summary.first_day.isoformat()
    window = window_between(first, None, tz=cfg.tz, now=utc_now())
    result = spend_report(open_ledger(url), window, ["tenant", "department", "model"], tz=cfg.tz)
    out.print(render_table(result, cfg.timezone))
    flag, ometer = f"--db {shlex.quote(url)}", program_name(sys.argv[0], os.environ.get("PATH", ""))
    out.print(
        "\nexplore the demo ledger:\n"
        f"  {ometer} log {flag} --limit 10\n"
        f"  {ometer} report {flag} --since {first} --by department,day\n"
        f"  {ometer} report {flag} --since {first} --by model --format csv\n"
        f"  {ometer} pricing list {flag}\n"
        f'then point OLLAMA_HOST at your Ollama and run `{ometer} chat -m llama3.1:8b "hello"`.'
    )


def program_name(invoked: str, path: str, cwd: Path | None = None) -> str:
    """How to type the ``ometer`` this process is: ``ometer`` when PATH finds it, else the
    path it was run by (``.venv/bin/ometer``, the README's first command, with no venv active)."""
    if Path(invoked).name != "ometer":
        return "ometer"  # python -m ollama_meter, a test runner
    here = Path(cwd or Path.cwd())
    found = shutil.which("ometer", path=path)
    if found and resolved(here / found) == resolved(here / invoked):
        return "ometer"
    return shlex.quote(invoked)
