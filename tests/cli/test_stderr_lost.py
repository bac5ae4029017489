"""A stderr that cannot be written (closed with ``2>&-``, a log file on a full disk, a reader
gone): the command's exit code and stdout are what they would be, its diagnostics dropped.

A budget's refusal (exit 3) and a usage error (exit 2) exited 1 there, failing to say so; and
``ometer chat`` whose call was answered and charged exited 1 on its footer, so a script asked
again and paid twice.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.cli import main
from ollama_meter.testing import OllamaEmulator


class _Full(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


LOST = {"full": _Full, "closed": lambda: None}


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``ometer ARGS`` in-process with stderr as ``lost`` makes it; its exit code and stdout."""

    def ometer(lost: str, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stderr", LOST[lost]())
        monkeypatch.setattr(sys, "argv", ["ometer", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, capsys.readouterr().out

    return ometer


@pytest.mark.parametrize("lost", LOST)
def test_each_exit_code_is_kept_when_stderr_is_lost(
    run: Any, cli: Any, sqlite_url: str, emulator: OllamaEmulator, lost: str
) -> None:
    db = ["--db", sqlite_url]
    cli("pricing", "set", "*", "--per-request", "2", *db)
    cli("budget", "set", "sales", "--tenant", "acme", "--monthly", "3", *db)
    chat = ["chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi", *db]
    code, reply = run(lost, *chat)  # answered and charged: its footer is not the outcome
    assert code == 0 and reply.strip()
    assert run(lost, *chat)[0] == 3  # the budget refuses
    assert run(lost, "log", "--limit", "x", *db)[0] == 2  # a usage error
    assert run(lost, "report", "--period", "2026-01", "--dept", "salse", *db)[0] == 0  # a note
    statuses = [s["status"] for s in json.loads(cli("log", "--json", *db).stdout)]
    assert statuses == ["rejected", "ok"]


@pytest.mark.parametrize("lost", ["2>&-", "2>/dev/full"])
def test_a_process_keeps_its_exit_code_with_stderr_closed_or_full(
    tmp_path: Path, lost: str
) -> None:
    """The interpreter's own stderr: None when started without one, a full device's raises."""
    if lost.endswith("full") and not Path("/dev/full").is_char_device():
        pytest.skip("needs the /dev/full device")
    code = "import sys; sys.argv[0] = 'ometer'; from ollama_meter.cli import main; main()"
    done = subprocess.run(
        f"{sys.executable} -c \"{code}\" log --limit x --db sqlite:///{tmp_path}/l.db {lost}",
        shell=True, check=False, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, b"")
