"""``ometer report``: spend and usage by tenant, department, user, model and time."""

from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from ollama_meter.cli._common import (
    Column,
    DataTable,
    DbOption,
    DeptFilter,
    Format,
    ModelFilter,
    OutOption,
    PeriodOption,
    SinceOption,
    TenantFilter,
    UntilOption,
    check_out,
    ledger_for,
    money,
    settings_and_window,
    table,
    utc_now,
    write_output,
    write_rows,
)
from ollama_meter.cli._console import err, out, shown
from ollama_meter.records import Micros
from ollama_meter.reports import BY_CHOICES

if TYPE_CHECKING:
    from ollama_meter.reports import SpendReport


class ReportFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    HTML = "html"


def report(
    period: PeriodOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    by: Annotated[
        str, typer.Option("--by", "-b", help=f"Group by any of: {', '.join(BY_CHOICES)}.")
    ] = "department",
    tenant: TenantFilter = None,
    dept: DeptFilter = None,
    model: ModelFilter = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", "-f", help="Output format; html is one self-contained page."),
    ] = ReportFormat.TABLE,
    out_file: OutOption = None,
    db: DbOption = None,
) -> None:
    """Spend and usage over a period, grouped as you ask. Costs are exact."""
    from ollama_meter.reports import parse_by, spend_report

    cfg, window = settings_and_window(period, since, until, db)
    columns = parse_by(by)
    file_formats = [f.value for f in ReportFormat if f is not ReportFormat.TABLE]
    check_out(fmt, out_file, file_formats)
    ledger = ledger_for(cfg, existing=True)
    where = {"tenant": tenant, "department": dept, "model": model}
    result = spend_report(ledger, window, columns, tz=cfg.tz, **where)
    if note := result.capped_note():  # on stderr, whatever the format: the file stays data
        err.print(shown("warning:", "yellow"), note)
    if fmt is ReportFormat.HTML:
        from ollama_meter.reports import render_spend_html

        page = render_spend_html(
            result,
            tz=cfg.tz,
            zone=cfg.timezone,
            generated=utc_now(),
            title=f"Spend by {', '.join(columns) or 'period'}{_whose(where)}",
        )
        write_output(page, out_file)
        return
    write_rows(
        Format(fmt.value),
        result.columns,
        result.rows,
        out_file,
        lambda: out.print(render_table(result, cfg.timezone)),
        file_formats=file_formats,
    )
    from ollama_meter.cli import _hints

    if not result.rows:
        _hints.note_unmatched(ledger, **where)
        return
    _hints.note_tenants_summed(ledger, window, columns, tz=cfg.tz, **where)


def _whose(where: dict[str, str | None]) -> str:
    """The filters, for the title of a file read by someone who never saw the command.

    As typed, they are anyone's text (a cron line's variable, a pasted name): each is shown
    as a log line shows text, its controls written as escapes, and set apart when it holds
    right-to-left letters, so it can neither hide nor reorder the period after it (an
    unclosed U+202E in ``--model`` drew "2026-11 · UTC" as "CTU · 11-6202")."""
    from ollama_meter._text import one_line
    from ollama_meter.reports import isolate

    named = [
        f"{what} {isolate(one_line(value))}" for what, value in where.items() if value is not None
    ]
    return f" of {', '.join(named)}" if named else ""


# Narrow headings for the terminal; CSV and JSON keep the exact column names.
_HEADINGS = {
    "requests": "calls",
    "input_tokens": "in tok",
    "output_tokens": "out tok",
    "gpu_seconds": "GPU s",
}


def _cell(name: str, value: object) -> str:
    if isinstance(value, Micros):
        return money(value)
    if isinstance(value, Decimal):  # GPU seconds
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(result: "SpendReport", zone: str) -> DataTable:
    """Rows, a total line when there is one currency, unpriced usage flagged.

    With one currency the currency goes into the cost heading. Numbers are never
    cut short; names fold onto more lines on a narrow terminal.
    """
    totals = result.totals()
    single = len(totals) == 1
    names = [c for c in result.columns if not (single and c == "currency")]
    columns = []
    for name in names:
        heading = _HEADINGS.get(name, name)
        if name == "cost" and single:
            heading = f"cost {totals[0].currency}"
        footer = ""
        if single:
            footer = (
                ("total" if name == result.by[0] else "")
                if name in result.by
                else _cell(name, totals[0][name])
            )
        numeric = name not in result.by and name != "currency"
        columns.append(Column(heading, numeric=numeric, footer=footer))
    rows: list[list[str | Text]] = []
    for row in result.rows:
        cells: list[str | Text] = [_cell(name, row[name]) for name in names]
        if row.unpriced_requests > 0:
            at = names.index("cost")
            cells[at] = shown(f"{cells[at]}*", "yellow")
        rows.append(cells)
    notes: list[str | Text] = []
    if not result.rows:
        notes.append("no calls in this period")
    if len(totals) > 1:
        notes.extend(f"total {money(t.cost, t.currency)}" for t in totals)
    if result.unpriced_requests:
        notes.append(
            shown(
                f"* {result.unpriced_requests} call(s) matched no price rule and count as 0; "
                "add one with `ometer pricing set`",
                "yellow",
            )
        )
    caption = Text(" · ").join(shown(n) for n in notes) if notes else None
    return table(f"spend {result.window.label} ({zone})", columns, rows, caption=caption)
