"""A command's settings: read once per run of a command.

Building them (the environment, ``.env``, every setting checked) takes 2 to 5 ms, and a
command read them twice: once for its logging, before it starts (``cli._root``), once for
itself. So within one run of the app the settings are kept by the overrides they were
read with, and a command with no flag over them gets the ones its logging was set up
from. Outside a run (a test calling :func:`settings` itself) and in the next run they are
read again: the environment or ``.env`` may have changed in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ollama_meter.errors import ConfigError

if TYPE_CHECKING:
    from ollama_meter.config import Settings

FLAGS = {
    "db_url": "--db",
    "ollama_host": "--upstream",
    "upstreams": "--upstream",
    "slots": "--slots",
    "max_queue": "--max-queue",
    "tenant": "--tenant",
    "department": "--dept",
    "currency": "--currency",
}
"""The flag each settings override comes from, so a bad value is named as the user typed it."""


class _Run:
    kept: ClassVar[dict[tuple[tuple[str, Any], ...], tuple[Settings, bool]] | None] = None
    """The settings read in the run of a command going on (by their overrides, and whether
    unknown names were said), or None between runs."""


def run_started() -> None:
    """A command starts: the settings are read afresh, once (until :func:`run_ended`)."""
    _Run.kept = {}


def run_ended() -> None:
    _Run.kept = None


def settings(*, warn: bool = True, **overrides: Any) -> Settings:
    """Settings with command-line overrides on top of the environment and ``.env``: read
    once in a run of a command, whose logging was set up from them (``warn``: say which
    ``OMETER_`` names are no setting, off only for that logging)."""
    from ollama_meter._environment import check_env_file, doubts
    from ollama_meter.config import known_env_names, load_settings

    for field, value in overrides.items():
        # Given empty is given: '--db "$DB"' with DB unset must not quietly mean the default.
        if isinstance(value, str) and not value.strip():
            raise ConfigError(
                f"{FLAGS.get(field, field)} is given empty; give a value, or leave it out "
                "for the configured one"
            )
    key = tuple(sorted((field, value) for field, value in overrides.items() if value is not None))
    run = _Run.kept
    kept = run.get(key) if run is not None else None
    if kept is None:
        cfg = load_settings(flags=FLAGS, warn=warn, **overrides)
    else:
        cfg, warned = kept
        if warn and not warned:
            flag = FLAGS["db_url"] if overrides.get("db_url") is not None else None
            doubts(cfg, check_env_file(Path(".env")), known_env_names(), db_flag=flag)
    if run is not None:
        run[key] = (cfg, warn or (kept is not None and kept[1]))
    return cfg
