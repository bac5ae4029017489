"""A full disk under the ledger and its spool: calls that completed are kept, new ones are refused.

The disk is a real, small tmpfs the test mounts (CI runs as root); the gateway is real,
on loopback, in front of the emulator.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_meter.ledger import SpanFilter, close_ledgers
from ollama_meter.testing import OllamaEmulator
from tests._tmpfs import small_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "32m") as mount:
        try:
            yield mount
        finally:
            close_ledgers()


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; returns the file to delete to free it again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def ask(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/chat",
        json={"model": "llama3.1:8b", "stream": False,
              "messages": [{"role": "user", "content": "some words to answer"}]},
        timeout=30,
    )  # fmt: skip


def test_full_disk_keeps_every_completed_call_and_refuses_new_ones(
    small_disk: Path, serve_on: Any, emulator: OllamaEmulator
) -> None:
    gateway = serve_on(emulator.url, f"sqlite:///{small_disk / 'ledger.db'}")
    assert ask(gateway.url).status_code == 200
    filler = fill(small_disk)
    answered = 1
    refused: httpx.Response | None = None
    for _ in range(400):  # the WAL may hold a few more spans before it needs new blocks
        reply = ask(gateway.url)
        if reply.status_code == 503:
            refused = reply
            break
        assert reply.status_code == 200
        answered += 1
    assert refused is not None, "the gateway kept taking calls it could not record"
    assert "nothing can be recorded" in refused.json()["error"]
    assert str(small_disk / "ledger.db") in refused.json()["error"]
    assert gateway.ledger.held >= 1
    assert ask(gateway.url).status_code == 503  # still refused while nothing can be written
    filler.unlink()
    time.sleep(1.1)  # the held spans are retried at most once a second
    deadline = time.monotonic() + 10
    while (reply := ask(gateway.url)).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert reply.status_code == 200
    answered += 1
    assert gateway.ledger.held == 0
    spans = gateway.ledger.latest(SpanFilter(), 1000)
    assert len(spans) == answered and {s.status for s in spans} == {"ok"}


def test_a_ledger_that_cannot_be_opened_on_a_full_disk_promises_no_spool(
    small_disk: Path,
) -> None:
    """Opening records nothing, so nothing waits in the spool: the message says only what to
    do (``ometer serve`` and every command start with it)."""
    from ollama_meter.errors import LedgerError
    from ollama_meter.ledger import Ledger

    fill(small_disk)
    with pytest.raises(LedgerError) as failed:
        Ledger(f"sqlite:///{small_disk / 'ledger.db'}")
    assert str(failed.value) == (
        f"cannot open the ledger at {small_disk / 'ledger.db'}: database or disk is full: "
        "free some disk space"
    )


def test_a_gateway_idle_once_the_disk_has_room_writes_what_it_held(
    small_disk: Path, serve_on: Any, emulator: OllamaEmulator
) -> None:
    """The spans held in memory were written by the next call's write only: a gateway that
    got no call after the disk had room again kept them in memory only, out of the ledger."""
    gateway = serve_on(emulator.url, f"sqlite:///{small_disk / 'ledger.db'}")
    assert ask(gateway.url).status_code == 200
    filler = fill(small_disk)
    answered = 1
    for _ in range(400):  # the WAL may hold a few more spans before it needs new blocks
        reply = ask(gateway.url)
        if reply.status_code == 503:
            break
        answered += 1
    assert gateway.ledger.held >= 1
    filler.unlink()
    deadline = time.monotonic() + 60  # a wait for the gateway's idle try, not a measure
    while gateway.ledger.held and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway.ledger.held == 0
    spans = gateway.ledger.latest(SpanFilter(), 1000)
    assert len(spans) == answered and {s.status for s in spans} == {"ok"}
