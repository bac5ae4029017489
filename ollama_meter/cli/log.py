"""``ometer log``: the latest spans."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ollama_meter.cli._common import (
    DbOption,
    DeptFilter,
    JsonFlag,
    ModelFilter,
    TenantFilter,
    local_time,
    money,
    ms,
    out,
    settings,
)
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Status, TokenSource, ledger_for
from ollama_meter.reports import span_to_dict

_STATUS_STYLE: dict[str, str] = {
    Status.OK: "green",
    Status.ERROR: "red",
    Status.REJECTED: "yellow",
    Status.INTERRUPTED: "red",
}


def log(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100_000, help="How many spans.")
    ] = 20,
    dept: DeptFilter = None,
    tenant: TenantFilter = None,
    model: ModelFilter = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only spans with this status (ok, error, rejected, client_abort, interrupted) "
            "or error type (timeout, connection, budget_exceeded, ...), as the table shows it.",
        ),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user.")] = None,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Show the latest metered calls, newest first."""
    cfg = settings(db_url=db)
    ledger = ledger_for(cfg)
    statuses = {s.value for s in Status}
    where = SpanFilter(
        tenant=tenant,
        department=dept,
        model=model,
        status=status if status in statuses else None,
        error_type=status if status and status not in statuses else None,
        user=user,
    )
    spans = ledger.latest(where, limit)
    if as_json:
        out.file.write(
            json.dumps([span_to_dict(s) for s in spans], indent=2, ensure_ascii=False) + "\n"
        )
        return
    if not spans:
        out.print("no spans yet; run `ometer chat ...` or `ometer demo`")
        return
    currencies = {span.currency for span in spans}
    single = len(currencies) == 1
    table = Table(title=f"latest {len(spans)} span(s) · {cfg.timezone}", title_justify="left")
    cost_heading = f"cost {next(iter(currencies))}" if single else "cost"
    rows: list[list[str]] = []
    for span in spans:
        approx = "~" if span.token_source == TokenSource.ESTIMATED else ""
        shown_status = span.error_type or span.status
        operation = "" if span.operation == "chat" else f" ({span.operation})"
        rows.append(
            [
                local_time(span.started_at, cfg)[5:],
                f"{span.tenant}/{span.department}",
                span.user or "",
                span.model + operation,
                shown_status,
                f"{approx}{span.input_tokens}→{approx}{span.output_tokens}",
                money(span.cost_total, None if single else span.currency)
                + ("*" if span.unpriced_usage else ""),
                ms(span.latency_ns),
            ]
        )
    headings = ["time", "tenant/dept", "user", "model", "status", "tokens", cost_heading, "latency"]
    if not any(span.user for span in spans):
        headings.remove("user")
        for row in rows:
            del row[2]
    for index, name in enumerate(headings):
        numeric = index >= len(headings) - 3
        width = max(len(name), *(len(row[index]) for row in rows))
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=True,
            min_width=width if numeric or name == "time" else None,
        )
    for span, row in zip(spans, rows, strict=True):
        style = _STATUS_STYLE.get(span.status, "magenta")
        at = headings.index("status")
        row[at] = f"[{style}]{row[at]}[/]"
        if span.unpriced_usage:
            row[at + 2] = f"[yellow]{row[at + 2]}[/]"
        table.add_row(*row)
    if any(span.unpriced_usage for span in spans):
        table.caption = "[yellow]* unpriced: no price rule matched (`ometer pricing set`)[/]"
    out.print(table)
