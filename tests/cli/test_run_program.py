"""`ometer run -- PROGRAM`: a program that cannot be started is one line that says why, with
the status a shell gives it (127: none by that name, 126: there but not runnable)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ollama_meter.cli.run import _Job
from ollama_meter.errors import ValidationError


def foreground(command: list[str], env: dict[str, str]) -> int:
    """``command`` run as ``ometer run`` runs it, with no drain after it."""
    with _Job() as job:
        return job.foreground(command, env)


def refused(command: list[str]) -> tuple[int, str]:
    with pytest.raises(ValidationError) as caught:
        foreground(command, dict(os.environ))
    return caught.value.exit_code, str(caught.value)


def test_a_program_that_cannot_start_says_why(tmp_path: Path) -> None:
    """`ometer run -- ''` said `cannot run : Permission denied`, and a folder or a script
    without its execute bit `Permission denied` alone, which told neither what was wrong
    nor what to do."""
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")
    assert refused([""]) == (
        127,
        "the program to run is empty: give its name after --, e.g. ometer run -- python job.py",
    )
    assert refused([str(tmp_path)]) == (
        126,
        f"cannot run {tmp_path}: it is a folder, not a program",
    )
    assert refused([str(script)]) == (
        126,
        f"cannot run {script}: it is not executable: chmod +x {script}, or put the program "
        f"that runs it first (e.g. ometer run -- python {script})",
    )
    assert refused([str(tmp_path / "nothing")]) == (127, f"no such program: {tmp_path / 'nothing'}")


def test_a_program_that_starts_gives_its_own_status(tmp_path: Path) -> None:
    assert foreground(["sh", "-c", "exit 7"], dict(os.environ)) == 7
    assert foreground(["sh", "-c", "kill -9 $$"], dict(os.environ)) == 128 + 9
