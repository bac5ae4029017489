"""``ometer perf``: where the time goes, per model and department (or any grouping)."""

from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from ollama_meter.cli._common import (
    Column,
    DataTable,
    DbOption,
    DeptFilter,
    Format,
    FormatOption,
    ModelFilter,
    OutOption,
    PeriodOption,
    SinceOption,
    TenantFilter,
    UntilOption,
    check_out,
    ledger_for,
    settings_and_window,
    table,
    write_rows,
)
from ollama_meter.cli._console import err, out, shown
from ollama_meter.reports import PERF_BY_CHOICES, PERF_DEFAULT_BY

if TYPE_CHECKING:
    from ollama_meter.reports import PerfReport


def perf(
    period: PeriodOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    by: Annotated[
        str, typer.Option("--by", "-b", help=f"Group by any of: {', '.join(PERF_BY_CHOICES)}.")
    ] = ",".join(PERF_DEFAULT_BY),
    tenant: TenantFilter = None,
    dept: DeptFilter = None,
    model: ModelFilter = None,
    fmt: FormatOption = Format.TABLE,
    out_file: OutOption = None,
    db: DbOption = None,
) -> None:
    """Latency and TTFT percentiles, tokens/s, cold loads, queueing and errors per group."""
    from ollama_meter.reports import parse_perf_by, perf_report

    cfg, window = settings_and_window(period, since, until, db)
    columns = parse_perf_by(by)
    check_out(fmt, out_file)
    ledger = ledger_for(cfg, existing=True)
    where = {"tenant": tenant, "department": dept, "model": model}
    result = perf_report(ledger, window, columns, tenant=tenant, department=dept, model=model)
    write_rows(
        fmt,
        result.columns,
        result.rows,
        out_file,
        lambda: out.print(render_table(result, cfg.timezone)),
    )
    from ollama_meter.cli import _hints

    if not result.rows:
        _hints.note_unmatched(ledger, **where)
    else:  # a department or user of several tenants is one row's percentiles, as in report
        _hints.note_tenants_summed(ledger, window, columns, tz=cfg.tz, **where)
    for warning in result.warnings:
        err.print(f"warning: {warning}")


# Narrow headings for the terminal; CSV and JSON keep the exact column names.
_HEADINGS = {
    "requests": "calls",
    "error_rate": "err %",
    "latency_p50_ms": "lat p50",
    "latency_p95_ms": "lat p95",
    "latency_p99_ms": "lat p99",
    "ttft_p50_ms": "TTFT p50",
    "ttft_p95_ms": "TTFT p95",
    "tokens_per_s": "tok/s",
    "cold_loads": "cold",
    "cold_load_s": "cold s",
    "queue_p50_ms": "queue p50",
    "queue_p95_ms": "queue p95",
    "gateway_queue_p50_ms": "gw queue p50",
    "gateway_queue_p95_ms": "gw queue p95",
}


def _cell(name: str, value: object) -> str:
    if value is None:
        return "-"
    if name == "error_rate" and isinstance(value, Decimal):
        return f"{value * 100:.1f}%"
    if isinstance(value, Decimal):
        # One decimal when that is exact; else every digit: a percentile is a bin's edge
        # (at most three significant digits), and rounding it could cross the true value.
        tenths = value.quantize(Decimal("0.1"))
        return f"{tenths if tenths == value else value.normalize():,f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(result: "PerfReport", zone: str) -> DataTable:
    """One line per group; the worst latency, speed, error rate and cold-load cells in bold red."""
    columns = [
        Column(_HEADINGS.get(name, name), numeric=name not in result.by) for name in result.columns
    ]
    worst = result.worst()
    rows: list[list[str | Text]] = []
    for index, row in enumerate(result.rows):
        cells: list[str | Text] = [_cell(name, row[name]) for name in result.columns]
        for column, flagged in worst.items():
            if index in flagged:
                at = result.columns.index(column)
                cells[at] = shown(cells[at], "bold red")
        rows.append(cells)
    caption: Text | str
    if not result.rows:
        caption = "no calls in this period"
    else:
        notes = [
            "lat, TTFT and queue in ms",
            "queue = Ollama's total time less load, prompt and generation",
            "gw queue = waiting to be sent (a gateway slot, an on_start hook; in lat and TTFT too)",
            "cold = model load ≥ 100 ms",
        ]
        caption = Text(" · ".join(notes))
        if worst:
            caption.append(" · ")
            caption.append("red", style="bold red")
            caption.append(": highest lat p95, lowest tok/s, highest err %, most cold s")
    return table(f"perf {result.window.label} ({zone})", columns, rows, caption=caption)
