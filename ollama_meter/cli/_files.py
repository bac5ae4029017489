"""Files a command is given: one to read (``-``: stdin), and whether one to write a report
over is a database (which no report may replace)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import BinaryIO

import typer

from ollama_meter._paths import database_file
from ollama_meter.errors import ValidationError

STDIN = Path("-")
"""What :func:`file_to_read` gives for ``-``: read :func:`stdin_bytes`, as every Unix tool."""


def stdin_bytes(what: str, command: str, piped: str) -> BinaryIO:
    """stdin's bytes for a command that reads ``what`` from ``-``; ValidationError when it is
    closed (``<&-``) or a terminal (nobody types it: the command would wait in silence).
    ``piped`` is how to pipe it in, in the command's words."""
    if sys.stdin is None:
        raise ValidationError(
            f"stdin is closed: give the {what} on it ({command} - < FILE) or its file name "
            f"({command} FILE)"
        )
    if sys.stdin.isatty():
        raise ValidationError(
            f"stdin is a terminal: pipe the {what} in ({piped}, or {command} - < FILE), or give "
            f"its file name ({command} FILE)"
        )
    # text-only stdins (an embedding host, a test) have no bytes underneath
    return getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode())


def file_to_read(value: str) -> Path:
    """A parser for a file a command reads, as click's ``Path(exists=True, dir_okay=False)``
    checks it, but an empty name (``"$FILE"`` with FILE unset) is said to be none: click took
    it for the current folder ("file '' is a directory"). ``-`` is :data:`STDIN`."""
    import click

    if isinstance(value, Path):
        return value
    if value == "-":
        return STDIN
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
