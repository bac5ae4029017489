"""Where ollama-meter keeps its files when not told otherwise: the user's data directory."""

from __future__ import annotations

from pathlib import Path

APP_NAME = "ollama-meter"


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
