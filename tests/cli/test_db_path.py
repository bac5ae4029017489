"""``ometer db path`` says where the ledger is, and only that: it makes nothing.

It opened the ledger to name it, so with the data folder not writable (HOME read-only, a file
where the folder should be) it failed with "cannot create the ledger folder" and printed no
path, the very thing asked for; and where it could, it made the folder of a ledger nobody had
yet. It now prints the path from the settings alone, with a note when nothing is there yet.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

NOT_YET = (
    "note: there is no ledger there yet: the first metered call, or `ometer db upgrade`, makes it\n"
)


def test_the_path_is_printed_where_no_folder_can_be_made(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "blocked").write_text("a file where the data folder would go")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "blocked" / "share"))
    done = cli("db", "path")
    assert (done.code, done.stdout, done.stderr) == (
        0,
        f"{tmp_path / 'blocked' / 'share' / 'ollama-meter' / 'ledger.db'}\n",
        NOT_YET,
    )


def test_a_read_only_home_is_no_error(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", refused)  # root may write any folder: a read-only file system
    done = cli("db", "path")
    assert done.code == 0, done.stderr
    assert (
        done.stdout == f"{tmp_path / 'home' / '.local' / 'share' / 'ollama-meter' / 'ledger.db'}\n"
    )
    assert done.stderr == NOT_YET


def test_it_makes_nothing_and_says_nothing_of_a_ledger_that_is_there(
    cli: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'x' / 'ledger.db'}"
    done = cli("db", "path", "--db", url)
    assert (done.stdout, done.stderr) == (f"{tmp_path / 'x' / 'ledger.db'}\n", NOT_YET)
    assert not (tmp_path / "x").exists()
    assert cli("db", "upgrade", "--db", url).code == 0
    assert cli("db", "path", "--db", url).stderr == ""
