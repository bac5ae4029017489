"""``ometer chargeback``: the month's bill per tenant and department, for finance and cron."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated

import typer

from ollama_meter.cli._common import DbOption, OutOption, err, settings, write_output
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import open_ledger
from ollama_meter.meter import utc_now
from ollama_meter.reports import CHARGEBACK_COLUMNS, chargeback, to_csv, to_json


class Idle(StrEnum):
    SHARE = "share"
    SEPARATE = "separate"


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"


def chargeback_command(
    month: Annotated[
        str, typer.Option("--month", "-m", help="The month to bill, YYYY-MM (local time).")
    ],
    out_file: OutOption = None,
    fixed_cost: Annotated[
        str | None,
        typer.Option(
            "--fixed-cost",
            help="Fixed monthly cost to spread by GPU busy time (default OMETER_FIXED_MONTHLY_COST).",
        ),
    ] = None,
    idle: Annotated[
        Idle,
        typer.Option(
            "--idle", help="Idle capacity: shared in proportion, or its own __idle__ row."
        ),
    ] = Idle.SHARE,
    gpus: Annotated[
        int, typer.Option("--gpus", min=1, help="GPUs per upstream host (capacity).")
    ] = 1,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.CSV,
    db: DbOption = None,
) -> None:
    """One row per tenant and department: usage, fixed-cost share and total. Same ledger, same bytes."""
    cfg = settings(db_url=db)
    amount = cfg.fixed_monthly_cost
    if fixed_cost is not None:
        try:
            amount = Decimal(fixed_cost)
        except InvalidOperation:
            raise ValidationError(f"--fixed-cost {fixed_cost!r} is not an amount") from None
    result = chargeback(
        open_ledger(cfg.ledger_url),
        month,
        tz=cfg.tz,
        now=utc_now(),
        currency=cfg.currency,
        fixed_cost=amount,
        idle=idle.value,
        gpus=gpus,
    )
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    render = to_csv if fmt is Format.CSV else to_json
    write_output(render(CHARGEBACK_COLUMNS, result.rows), out_file)
