"""`ometer keys create` prints the key once: a key that could not be shown is no live key."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from typing import Any

import pytest


class _Full(io.RawIOBase):
    """A stdout on a full disk (or a pipe its reader closed): every byte refused."""

    def __init__(self, number: int) -> None:
        self.number = number

    def writable(self) -> bool:
        return True

    def write(self, _: Any) -> int:
        raise OSError(self.number, os.strerror(self.number))


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EPIPE])
def test_a_key_that_could_not_be_shown_is_revoked(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, number: int
) -> None:
    """`ometer keys create ... > /dev/full` left a live key whose secret no one ever saw
    (and the run again a second one): the key is revoked, and stderr says so."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    with monkeypatch.context() as streams:
        streams.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(_Full(number))))
        done = cli("keys", "create", "--tenant", "acme", "--dept", "sales", "--name", "bot")
    assert done.code == 1
    assert "note: key 1 (bot) is revoked: it could not be shown; run the command again" in (
        done.stderr
    )
    assert sum(line.startswith("error:") for line in done.stderr.splitlines()) <= 1
    (key,) = json.loads(cli("keys", "list", "--json").stdout)
    assert (key["id"], key["revoked"]) == (1, True), key
