"""``ometer chargeback``: the month's bill per tenant and department, for finance and cron."""

from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter.cli._common import (
    DbOption,
    OutOption,
    ledger_for,
    settings,
    utc_now,
    write_output,
)
from ollama_meter.cli._console import err, shown
from ollama_meter.errors import ValidationError
from ollama_meter.records import MAX_AMOUNT, minor_places, parse_amount
from ollama_meter.reports import IdleMode

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"
    HTML = "html"


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
        IdleMode,
        typer.Option(
            "--idle", help="Idle capacity: shared in proportion, or its own __idle__ row."
        ),
    ] = "share",
    gpus: Annotated[
        int, typer.Option("--gpus", min=1, help="GPUs per upstream host (capacity).")
    ] = 1,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.CSV,
    db: DbOption = None,
) -> None:
    """One row per tenant and department: usage, fixed-cost share and total. Same ledger, same bytes."""
    from ollama_meter.reports import CHARGEBACK_COLUMNS, chargeback, to_csv, to_json

    cfg = settings(db_url=db)
    amount = cfg.fixed_monthly_cost
    if fixed_cost is not None:
        try:
            amount = parse_amount(
                fixed_cost,
                what="--fixed-cost",
                limit=MAX_AMOUNT,
                places=minor_places(cfg.currency),  # cents; yen; fils, a thousandth of a dinar
            )
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
    ledger = ledger_for(cfg, existing=True)
    result = chargeback(
        ledger,
        month,
        tz=cfg.tz,
        now=utc_now(),
        currency=cfg.currency,
        fixed_cost=amount,
        idle=idle,
        gpus=gpus,
    )
    # the HTML file's notes too: finance reads the mail, not the job's stderr
    result.warnings.extend(_other_zone(ledger, cfg, result.month))
    for warning in result.warnings:
        err.print(shown("warning:", "yellow"), warning)
    if fmt is Format.HTML:
        from ollama_meter.reports import render_chargeback_html

        page = render_chargeback_html(result, tz=cfg.tz, zone=cfg.timezone, generated=utc_now())
        write_output(page, out_file)
        return
    render = to_csv if fmt is Format.CSV else to_json
    write_output(render(CHARGEBACK_COLUMNS, result.rows), out_file)


def _other_zone(ledger: "Ledger", cfg: "Settings", month: str) -> list[str]:
    """What to say when the bill is cut at another zone's midnight than the ledger's: its
    budgets and price rules' dates run on the ledger's months (one for every gateway on it),
    so a call near midnight would be one month's for the budget and the next's on the bill.

    Nothing when the two zones begin and end the month at the same instants, by whatever
    names: a ledger kept in UTC billed on a host set to Etc/UTC (Debian's name for it) warned
    every month, on a cron job's stderr, of a bill that was the ledger's month to the second."""
    from ollama_meter.meter._prices import ledger_zone
    from ollama_meter.periods import local_midnight, next_month

    zone = ledger_zone(ledger, cfg)
    first = date.fromisoformat(f"{month}-01")
    if all(
        local_midnight(day, zone) == local_midnight(day, cfg.tz)
        for day in (first, next_month(first))
    ):
        return []
    kept = str(zone)
    return [
        f"this bill cuts {month} at midnight in {cfg.tz} (OMETER_TIMEZONE); the ledger's days "
        f"and months, its budgets' and price rules' dates, begin at midnight in {kept}: set "
        f"OMETER_TIMEZONE={kept} to bill those"
    ]
