"""What every command shares: option types, consoles, tables, settings, and how errors are shown.

Everything printed goes through :data:`out` and :data:`err`, or a table made by
:func:`table`. Names, models, messages and tags come from callers, so nothing
printed is ever read as rich markup, and control characters (C0, DEL, C1,
bidirectional overrides) are replaced before they reach the terminal: data
cannot make links, clear the screen, move the cursor or hide text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter._paths import (
    cannot_write,
    control_characters,
    folder_problem,
    replace_file,
    unreachable_ledger,
    written_through,
)
from ollama_meter.cli._console import err, named, write_data
from ollama_meter.cli._files import a_database
from ollama_meter.cli._settings import settings as settings  # noqa: PLC0414 (where commands get it)
from ollama_meter.cli._table import Column as Column, DataTable as DataTable, table as table  # noqa: PLC0414
from ollama_meter.errors import ConfigError, LedgerError, OmeterError, ValidationError
from ollama_meter.periods import PERIOD_HELP, Window, parse_period, window_between
from ollama_meter.records import format_micros

if TYPE_CHECKING:
    from rich.progress import Progress

    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger


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
OriginsOption = Annotated[
    str,
    typer.Option(
        "--origins",
        envvar="OMETER_ORIGINS",
        help="Web pages that may call from a browser beyond Ollama's defaults (origins, comma-separated, * wildcards).",
    ),
]
"""The pages a gateway answers (``ometer serve``'s, ``ometer run``'s): see ``gateway/_origins.py``."""
ModelFilter = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Only this model, as Ollama resolves it (LLAMA3.1 is llama3.1:latest).",
    ),
]
TenantFilter = Annotated[
    str | None, typer.Option("--tenant", "-t", help="Only this tenant (default: all).")
]
DeptFilter = Annotated[
    str | None,
    typer.Option("--dept", "--department", "-d", help="Only this department (default: all)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RowId = Annotated[int, typer.Argument(help="Its id, as the list command shows.")]


def file_to_write(
    example: str, *, dash: bool = False, report: bool = False
) -> Callable[[str], Path | None]:
    """A parser for a path a command writes a file to. A folder's is refused, with ``example``
    as a file name to give in it: one that is there, and one that is not there yet but
    ends in ``/`` (the path type dropped the slash, and a file of the folder's name was
    written). ``dash``: ``-`` is stdout (None), as for every Unix tool, not a file named ``-``;
    without it ``-`` is refused, never that file made unasked (a SQLite file is written in
    place, not to a stream). ``report``: a SQLite database is refused too, before any ledger
    is read."""

    def parse(value: str) -> Path | None:
        if isinstance(value, Path):  # a default, or a caller that parsed it already
            return value
        if value == "-":
            if dash:
                return None
            raise typer.BadParameter(
                "'-' is stdout, and a backup is a SQLite file, which cannot be written to a "
                "stream: give a file's path (./- for a file named -)"
            )
        if not value:  # '--out "$FILE"' with FILE unset: not the current folder
            raise typer.BadParameter(f"{value!r} is no file name; give the file to write")
        if problem := control_characters(value):
            raise typer.BadParameter(problem)
        if value.endswith(("/", os.sep)) or _is_folder(Path(value)):
            folder = value.rstrip("/" + os.sep) or value
            raise typer.BadParameter(
                f"{value!r} is a folder: give the name of a file in it (e.g. "
                f"{Path(folder) / example})"
            )
        if report and (problem := a_database(Path(value))):
            raise typer.BadParameter(f"{value!r} {problem}")
        if problem := folder_problem(Path(value)):
            raise typer.BadParameter(f"cannot write {value}: {problem}")
        return Path(value)

    return parse


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, say: the write says so in the system's words
        return False


OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Write to this file instead of stdout ('-': stdout).",
        parser=file_to_write("report.csv", dash=True, report=True),
    ),
]


def ledger_for(cfg: Settings, *, existing: bool = False) -> Ledger:
    """The configured ledger (see :func:`ollama_meter.meter.ledger_for`); ``existing``: for a
    command that reads what was recorded, a ledger file that is not there is an error
    (:func:`_must_exist`).

    Loaded here, when a command runs, so that ``--help`` and the commands that never
    open the ledger do not pay for SQLAlchemy.
    """
    from ollama_meter.meter import ledger_for as configured

    if existing:
        must_exist(cfg)
    return configured(cfg)


def ledger_at(db: str | None, *, existing: bool = False) -> Ledger:
    """The ledger ``--db`` names (else the configured one), opened by :func:`ledger_for`."""
    return ledger_for(settings(db_url=db), existing=existing)


def ledger_as_is(cfg: Settings, *, existing: bool = False) -> Ledger:
    """The configured ledger as it stands, for upkeep: no pricing file or budgets brought in."""
    from ollama_meter.ledger import open_ledger

    if existing:
        must_exist(cfg)
    return open_ledger(cfg.ledger_url, wait=cfg.ledger_wait, zone=cfg.timezone)


def must_exist(cfg: Settings, *, default_too: bool = False) -> None:
    """Refuse to read a SQLite ledger that a URL names (or, ``default_too``, the default
    one) and that is not there.

    Opening it would make a new, empty one: a typo in OMETER_DB_URL gave "no calls in this
    period" and a bill putting the whole fixed cost on ``__idle__``, exit 0. The default
    ledger, never written yet, is a first run's: reports read it as empty.
    """
    if not cfg.db_url and not default_too:
        return
    from ollama_meter.ledger import ledger_file

    path = ledger_file(cfg.ledger_url)
    if path is None:
        return
    if why := unreachable_ledger(path):  # as opening it says, in every command
        raise LedgerError(why)
    if not path.exists():  # a folder: opening it says so
        raise ConfigError(
            f"no ledger at {path}: nothing was ever recorded there. Check OMETER_DB_URL (or "
            "--db) for a typo; a ledger is made by the first call metered into it, or by "
            "`ometer db upgrade`"
        )
    from ollama_meter.ledger._why import empty_file, is_empty

    if path.is_file() and is_empty(path):  # emptied: opening it would make it a new ledger
        raise ConfigError(empty_file(path))


def utc_now() -> datetime:
    return datetime.now(UTC)


PeriodOption = Annotated[
    str | None, typer.Option("--period", "-p", help=f"{PERIOD_HELP} (default: month).")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="From this local date (YYYY-MM-DD).")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="Through this local date (YYYY-MM-DD).")
]


def settings_and_window(
    period: str | None, since: str | None, until: str | None, db: str | None
) -> tuple[Settings, Window]:
    """Settings (``--db`` on top), and the reporting window of ``--period`` or
    ``--since/--until`` (default: this month) in the configured zone."""
    cfg = settings(db_url=db)
    # An option given empty is given: '--since ""' is refused as no date, never read as absent.
    dates = since is not None or until is not None
    if period is not None and dates:
        raise ValidationError("give either --period or --since/--until, not both")
    now = utc_now()
    if dates:
        return cfg, window_between(since, until, tz=cfg.tz, now=now)
    return cfg, parse_period("month" if period is None else period, tz=cfg.tz, now=now)


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def write_rows(
    fmt: Format,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, object]],
    path: Path | None,
    show_table: Callable[[], None],
    *,
    file_formats: Sequence[str] = ("csv", "json"),
) -> None:
    """A report's rows as CSV or JSON (to stdout or ``--out``), or as a table on the terminal.

    ``file_formats``: every format the command writes to ``--out`` (the refusal names them all).
    """
    if fmt is Format.CSV:  # the writers load here: a table needs neither (nor msgspec)
        from ollama_meter.reports import to_csv

        write_output(to_csv(columns, rows), path)
    elif fmt is Format.JSON:
        from ollama_meter.reports import to_json

        write_output(to_json(columns, rows), path)
    else:
        check_out(fmt, path, file_formats)
        show_table()


def check_out(fmt: str, path: Path | None, file_formats: Sequence[str] = ("csv", "json")) -> None:
    """Refuse ``--out`` for a table (which goes to the terminal), before any ledger is read."""
    if path is not None and fmt == Format.TABLE:
        *first, last = file_formats
        raise ValidationError(f"--out needs --format {', '.join(first)} or {last}")


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
        write_data(text)
        return
    through: Path | None = None
    try:
        through = written_through(path)
        if through is not None and through.exists() and not through.is_file():
            # a device or pipe: written into (a link to a file not there yet: made, renamed)
            with through.open("w", encoding="utf-8", newline="") as file:
                file.write(text)
            return
    except OSError as exc:  # a device that fails, or links that loop
        raise OmeterError(f"cannot write {path}: {cannot_write(through or path, exc)}") from None
    if problem := a_database(through or path):
        raise ValidationError(f"{path} {problem}")
    try:
        replace_file(through or path, text)
    except OSError as exc:
        raise OmeterError(f"cannot write {path}: {cannot_write(through or path, exc)}") from None
    err.print(f"wrote {named(path)}")


def progress_bar(
    what: str,
    *,
    unit: str | None = None,
    rate: bool = False,
    remaining: bool = True,
    shown: bool = True,
) -> Progress:
    """A progress bar on stderr, gone when done (rich's progress loads only here).

    It counts "done/total", or the count done with ``unit`` after it, or (``rate``)
    bytes per second; ``remaining`` adds the time left. ``shown`` False hides it (a command
    whose output is that terminal too: drawn among its lines it would cut into them).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress as Bar,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    count: ProgressColumn = MofNCompleteColumn()
    if rate:
        count = TransferSpeedColumn()
    elif unit is not None:
        count = TextColumn("{task.completed:,.0f}" + unit)
    columns = [TextColumn(what), BarColumn(), count]
    if remaining:
        columns.append(TimeRemainingColumn())
    # Not a terminal (cron, a log file): no bar, not even the blank line a finished one leaves.
    return Bar(*columns, console=err, transient=True, disable=not (shown and err.is_terminal))
