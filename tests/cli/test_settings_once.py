"""A command reads its settings once; the next command, and code outside one, read them anew."""

from __future__ import annotations

import cProfile
import itertools
import pstats
from pathlib import Path

import pytest

from ollama_meter import _environment
from ollama_meter.cli._common import settings


@pytest.fixture
def ledger(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """A SQLite ledger, made, as OMETER_DB_URL."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OMETER_DB_URL", url)
    assert cli("db", "upgrade").code == 0
    return url


def _settings_loads(cli, *args: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """The exit code of ``ometer ARGS`` and how many times it built the settings."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        code = cli(*args).code
    finally:
        profile.disable()
    loads = sum(
        calls
        for (path, _, function), (_, calls, *_) in pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
        if function == "load_settings" and path.endswith("config.py")
    )
    return code, loads


@pytest.mark.parametrize(
    "args",
    [("report",), ("log",), ("budget", "status"), ("db", "rollup"), ("pricing", "list")],
)
def test_a_command_builds_its_settings_once(
    cli,  # type: ignore[no-untyped-def]
    ledger: str,
    args: tuple[str, ...],
) -> None:
    """Building them takes milliseconds, and every command built them twice: once to set
    up its logging, once for itself."""
    assert _settings_loads(cli, *args) == (0, 1)


def test_a_changed_environment_is_read_by_the_next_command_and_outside_one(
    cli,  # type: ignore[no-untyped-def]
    ledger: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings kept for a command are not kept past it: a test, or a program running
    commands in one process, that changes the environment between them is heard."""
    zones = ("Asia/Tokyo", "Europe/Paris", "America/New_York", "UTC")
    for zone, then in itertools.pairwise(zones):
        monkeypatch.setenv("OMETER_TIMEZONE", zone)
        result = cli("report")
        assert result.code == 0, result.stderr
        assert f"({zone})" in result.stdout.splitlines()[0]
        monkeypatch.setenv("OMETER_TIMEZONE", then)
        assert settings().timezone == then
    monkeypatch.setenv("OMETER_TIMEZONE", "Nowhere/Atlantis")
    result = cli("report")
    assert (result.code, result.stderr.count("error: ")) == (2, 1)
    assert "OMETER_TIMEZONE" in result.stderr


def test_a_misspelt_setting_is_still_said_by_a_command_that_reads_them_once(
    cli,  # type: ignore[no-untyped-def]
    ledger: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings the logging was set up from are read without naming unknown names (the
    logging is not set up yet); the command that takes them over still says them."""
    monkeypatch.setattr(_environment, "_warned", set())  # as in a process of its own
    monkeypatch.setenv("OMETER_KEEP_DAY", "30")
    result = cli("report")
    assert result.code == 0, result.stderr
    assert "OMETER_KEEP_DAY is not an ometer setting and is ignored" in result.stderr
    assert "did you mean OMETER_KEEP_DAYS?" in result.stderr
