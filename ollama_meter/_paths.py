"""Where ollama-meter keeps its files when not told otherwise: the user's data directory."""

from __future__ import annotations

import contextlib
from pathlib import Path

APP_NAME = "ollama-meter"


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def discard(path: Path) -> None:
    """Remove the temp file a failed write may have left. Never raises: the removal fails
    for the same reason the write did (a name too long, a file where a folder should be),
    and the error to show is the write's."""
    with contextlib.suppress(OSError):
        path.unlink()


def sqlite_file_problem(database: str | None) -> str | None:
    """Why a SQLite URL's ``database`` cannot be a ledger (in memory, not a file), or None."""
    if database in (None, "", ":memory:"):
        return "is an in-memory SQLite database, which keeps nothing once the command ends"
    if "\x00" in database:
        return "holds a NUL, which no file name can"
    if database.endswith("/") or not Path(database).name:
        return "names a folder, not a file"
    return None
