"""A relative SQLite URL names a file in the working folder: said, with the absolute one.

``OMETER_DB_URL=sqlite:///ledger.db`` meant /srv/ledger.db to a gateway started in /srv and
~/ledger.db to a cron ``ometer chargeback``: two ledgers, each silently empty of the other's
calls. The path is still read from the working folder, as SQLAlchemy and every command line
read a relative path, but once, when the settings are read (a process that changes folder
later keeps its ledger), and every command says which file it is and how to write it absolute.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.config import Settings

WARNING = (
    "WARNING ollama_meter.config: {where} 'sqlite:///{given}' is relative to the working "
    "folder: here it is the ledger {absolute}, and a command run from another folder (cron "
    "runs in the home folder) reads and writes another; give it absolute: "
    "sqlite:///{absolute}\n"
)


@pytest.mark.parametrize("given", ["ledger.db", "./ledger.db"])
def test_a_relative_url_is_the_working_folders_file_and_said(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    for folder in ("srv", "cron"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        monkeypatch.setenv("OMETER_DB_URL", f"sqlite:///{given}")
        absolute = tmp_path / folder / "ledger.db"
        done = cli(
            "budget", "set", "sales", "-t", "acme", "--monthly", "5", "--db", f"sqlite:///{given}"
        )
        assert done.code == 0
        assert done.stderr == WARNING.format(where="--db", given=given, absolute=absolute)
        assert absolute.is_file()
        done = cli("db", "path")
        assert (done.code, done.stdout) == (0, f"{absolute}\n")
        assert done.stderr == WARNING.format(where="OMETER_DB_URL", given=given, absolute=absolute)


def test_an_absolute_url_says_nothing(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "ledger.db").touch()
    done = cli("db", "path", "--db", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert (done.code, done.stderr) == (0, "")
    (tmp_path / "home" / "ledger.db").touch()
    done = cli("db", "path", "--db", "sqlite:///~/ledger.db")  # the home folder's, as opened
    assert (done.code, done.stdout, done.stderr) == (0, f"{tmp_path / 'home' / 'ledger.db'}\n", "")


def test_the_file_is_fixed_when_the_settings_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python program that reads its settings, then changes folder, keeps its ledger; a
    program's own Settings say nothing (its logging is its own to configure)."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        cfg = Settings(db_url="sqlite:///ledger.db")
    monkeypatch.chdir("/")
    assert cfg.ledger_url == f"sqlite:///{tmp_path / 'ledger.db'}"
    assert caplog.messages == []


def test_names_that_are_url_syntax_stay_the_files_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    folder = tmp_path / "a b%20c?d#e"
    folder.mkdir()
    monkeypatch.chdir(folder)
    url = Settings(db_url="sqlite:///x%25y.db").ledger_url
    assert make_url(url).database == str(folder / "x%y.db")
