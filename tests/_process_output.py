"""The output of the real processes a test started, shown in its report when it fails.

A gateway started by ``tests/gateway/test_processes.start_gateway`` writes to an anonymous
file that nothing reads while the test passes; when one failed in CI (its ``/healthz`` did
not answer, 22 s), the file went with it and the cause was unknown. The file is kept open
here until the test's end, and read only for a report that failed (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from typing import BinaryIO

TAIL = 16_000
"""Bytes shown from the end of each process's output: its last words, not its whole life."""

_kept: list[tuple[str, BinaryIO]] = []


def keep(name: str, output: BinaryIO) -> None:
    """Show the end of ``output`` (a file the process ``name`` writes to) if the test fails;
    the file is closed when the test ends (``forget``)."""
    _kept.append((name, os.fdopen(os.dup(output.fileno()), "rb")))


def tails() -> list[tuple[str, str]]:
    """(title, last words) of each kept process's output, for a failed test's report."""
    said = []
    for name, output in _kept:
        size = os.fstat(output.fileno()).st_size
        start = max(0, size - TAIL)
        text = os.pread(output.fileno(), size - start, start).decode(errors="replace")
        cut = f", its last {size - start} of {size} bytes" if start else ""
        said.append((f"output of {name}{cut}", text))
    return said


def forget() -> None:
    while _kept:
        _kept.pop()[1].close()
