"""Files a command is given: one to read, and whether one to write a report over is a
database (which no report may replace)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ollama_meter._paths import database_file


def file_to_read(value: str) -> Path:
    """A parser for a file a command reads, as click's ``Path(exists=True, dir_okay=False)``
    checks it, but an empty name (``"$FILE"`` with FILE unset) is said to be none: click took
    it for the current folder ("file '' is a directory")."""
    import click

    if isinstance(value, Path):
        return value
    if not value:
        raise typer.BadParameter(f"{value!r} is no file name; give the file to read")
    try:
        found = click.Path(exists=True, dir_okay=False).convert(value, None, None)
    except click.BadParameter as exc:  # said for the parameter, in its words ("file 'x' ...")
        raise typer.BadParameter(exc.message[:1].lower() + exc.message[1:]) from None
    return Path(os.fsdecode(found))


def a_database(path: Path) -> str | None:
    """Why a report must not be written over ``path`` (a ledger, a backup, a WAL: a typo of
    ``--out ledger.db`` replaced every span with a CSV), else None."""
    if what := database_file(path):
        return f"is {what}, not a report: --out replaces only a file that is no database: give another file"
    return None
