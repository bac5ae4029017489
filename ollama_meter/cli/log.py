"""``ometer log``: the latest spans."""

from typing import Annotated

import typer
from rich.text import Text

from ollama_meter._text import json_text
from ollama_meter.cli._common import (
    Column,
    DbOption,
    DeptFilter,
    JsonFlag,
    ModelFilter,
    TenantFilter,
    ledger_for,
    local_time,
    money,
    ms,
    settings,
    table,
)
from ollama_meter.cli._console import out, shown, write_data
from ollama_meter.records import Status, TokenSource

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
    from ollama_meter.errors import ValidationError
    from ollama_meter.ledger import SpanFilter

    cfg = settings(db_url=db)
    if status is not None and not status.strip():
        # Read as absent it showed every span under "no spans match" when there were none.
        raise ValidationError(
            "--status is given empty; give a status or error type, or leave it out"
        )
    ledger = ledger_for(cfg, existing=True)  # a typo must not make an empty ledger
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
        from ollama_meter.reports import span_to_dict

        write_data(json_text([span_to_dict(s) for s in spans], indent=2) + "\n")
        return
    if not spans:
        filtered = any(v is not None for v in (tenant, dept, model, status, user))
        if filtered:
            from ollama_meter.cli._hints import unmatched

            hint = unmatched(
                ledger, tenant=tenant, department=dept, model=model, user=user, status=status
            )
            out.print(f"no spans match these filters{f': {hint}' if hint else ''}")
        else:
            out.print("no spans yet; run `ometer chat ...` or `ometer demo`")
        return
    currencies = {span.currency for span in spans}
    single = len(currencies) == 1
    cost_heading = f"cost {next(iter(currencies))}" if single else "cost"
    rows: list[list[str | Text]] = []
    for span in spans:
        approx = "~" if span.token_source == TokenSource.ESTIMATED else ""
        operation = "" if span.operation == "chat" else f" ({span.operation})"
        cost = money(span.cost_total, None if single else span.currency)
        rows.append(
            [
                local_time(span.started_at, cfg)[5:],
                f"{span.tenant}/{span.department}",
                span.user or "",
                span.model + operation,
                shown(
                    span.error_type or span.status,
                    _STATUS_STYLE.get(span.status, "magenta"),
                ),
                f"{approx}{span.input_tokens}→{approx}{span.output_tokens}",
                shown(cost + "*", "yellow") if span.unpriced_usage else cost,
                ms(span.latency_ns),
            ]
        )
    columns = [
        Column("time", numeric=True),
        Column("tenant/dept"),
        Column("user"),
        Column("model"),
        Column("status"),
        Column("tokens", numeric=True),
        Column(cost_heading, numeric=True),
        Column("latency", numeric=True),
    ]
    if not any(span.user for span in spans):
        del columns[2]
        for row in rows:
            del row[2]
    caption = None
    if any(span.unpriced_usage for span in spans):
        caption = shown("* unpriced: no price rule matched (`ometer pricing set`)", "yellow")
    out.print(
        table(f"latest {len(spans)} span(s) · {cfg.timezone}", columns, rows, caption=caption)
    )
