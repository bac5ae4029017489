"""What every command shares: option types, consoles, settings, and how errors are shown."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ollama_meter.config import Settings, load_settings
from ollama_meter.errors import OmeterError, ValidationError
from ollama_meter.meter import utc_now
from ollama_meter.periods import PERIOD_HELP, Window, parse_period, window_between
from ollama_meter.pricing import format_micros
from ollama_meter.reports import to_csv, to_json

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Ledger database URL (overrides OMETER_DB_URL).", show_default=False),
]
TenantOption = Annotated[
    str | None,
    typer.Option("--tenant", "-t", help="Tenant (default: OMETER_TENANT or 'default')."),
]
DeptOption = Annotated[
    str | None,
    typer.Option("--dept", "--department", "-d", help="Department (default: OMETER_DEPARTMENT)."),
]
ModelFilter = Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")]
TenantFilter = Annotated[
    str | None, typer.Option("--tenant", "-t", help="Only this tenant (default: all).")
]
DeptFilter = Annotated[
    str | None,
    typer.Option("--dept", "--department", "-d", help="Only this department (default: all)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write to this file instead of stdout.", dir_okay=False),
]


def settings(**overrides: Any) -> Settings:
    """Settings with command-line overrides on top of the environment and ``.env``."""
    return load_settings(**overrides)


PeriodOption = Annotated[
    str | None, typer.Option("--period", "-p", help=f"{PERIOD_HELP} (default: month).")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="From this local date (YYYY-MM-DD).")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="Through this local date (YYYY-MM-DD).")
]


def window_from_options(
    period: str | None, since: str | None, until: str | None, cfg: Settings
) -> Window:
    """The reporting window of ``--period`` or ``--since/--until`` (default: this month)."""
    if period and (since or until):
        raise ValidationError("give either --period or --since/--until, not both")
    now = utc_now()
    if since or until:
        return window_between(since, until, tz=cfg.tz, now=now)
    return parse_period(period or "month", tz=cfg.tz, now=now)


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def write_rows(
    fmt: Format,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    path: Path | None,
    show_table: Callable[[], None],
) -> None:
    """A report's rows as CSV or JSON (to stdout or ``--out``), or as a table on the terminal."""
    if fmt is Format.CSV:
        write_output(to_csv(columns, rows), path)
    elif fmt is Format.JSON:
        write_output(to_json(columns, rows), path)
    elif path is not None:
        raise ValidationError("--out needs --format csv or json")
    else:
        show_table()


def money(micros: int, currency: str | None = None) -> str:
    text = format_micros(micros)
    return f"{text} {currency}" if currency else text


def local_time(moment: datetime, cfg: Settings) -> str:
    return moment.astimezone(cfg.tz).strftime("%Y-%m-%d %H:%M:%S")


def ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.0f} ms"


def write_output(text: str, path: Path | None) -> None:
    """Print, or write ``path`` atomically (a temp file renamed over it)."""
    if path is None:
        out.file.write(text)
        out.file.flush()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OmeterError(f"cannot write {path}: {exc.strerror}") from None
    err.print(f"wrote {path}")
