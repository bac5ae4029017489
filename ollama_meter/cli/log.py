"""``ometer log``: the latest spans."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ollama_meter.cli._common import (
    DbOption,
    DeptOption,
    JsonFlag,
    ModelFilter,
    TenantOption,
    local_time,
    money,
    ms,
    out,
    settings,
)
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.meter import Status, TokenSource
from ollama_meter.reports import span_to_dict

_STATUS_STYLE = {Status.OK: "green", Status.ERROR: "red", Status.REJECTED: "yellow"}


def log(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=100_000, help="How many spans.")
    ] = 20,
    dept: DeptOption = None,
    tenant: TenantOption = None,
    model: ModelFilter = None,
    status: Annotated[
        Status | None, typer.Option("--status", help="Only spans with this status.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user.")] = None,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Show the latest metered calls, newest first."""
    cfg = settings(db_url=db)
    ledger = open_ledger(cfg.ledger_url)
    where = SpanFilter(
        tenant=tenant,
        department=dept,
        model=model,
        status=status.value if status else None,
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
    table = Table(title=f"latest {len(spans)} span(s) · {cfg.timezone}", title_justify="left")
    for name in (
        "time",
        "tenant",
        "dept",
        "user",
        "model",
        "op",
        "status",
        "in",
        "out",
        "cost",
        "latency",
    ):
        table.add_column(
            name, justify="right" if name in ("in", "out", "cost", "latency") else "left"
        )
    for span in spans:
        approx = "~" if span.token_source == TokenSource.ESTIMATED else ""
        status_text = span.status if span.error_type is None else f"{span.status}:{span.error_type}"
        table.add_row(
            local_time(span.started_at, cfg),
            span.tenant,
            span.department,
            span.user or "",
            span.model,
            span.operation,
            f"[{_STATUS_STYLE.get(Status(span.status), 'magenta')}]{status_text}[/]",
            f"{approx}{span.input_tokens}",
            f"{approx}{span.output_tokens}",
            "[yellow]unpriced[/]" if span.unpriced else money(span.cost_total, span.currency),
            ms(span.latency_ns),
        )
    out.print(table)
