"""`db import` given input that fails to read or is no export: one line that names the input
and how far it got, a non-zero exit, and the spans before it recorded once."""

from __future__ import annotations

import errno
import io
import json
import sys
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, rebuild, span_to_dict
from tests.ledger.test_transfer import _spans, _tables


class _FailingStdin(io.TextIOBase):
    """A stdin whose bytes fail to read after ``good``, as a failing disk or a file on NFS
    that went stale under the reader does."""

    def __init__(self, good: bytes, error: int) -> None:
        self.buffer = self._Buffer(good, error)

    def isatty(self) -> bool:
        return False

    class _Buffer(io.BytesIO):
        def __init__(self, good: bytes, error: int) -> None:
            super().__init__(good)
            self.error = error

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            if not line:
                raise OSError(self.error, "read failed")
            return line


@pytest.mark.parametrize("error", [errno.EIO, errno.EINVAL, errno.ESTALE])
def test_an_input_that_fails_to_read_says_so_and_how_far_the_import_got(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """A read error was taken for output that could not be written ("cannot write the
    output: Input/output error") or for a bug of ometer (exit 70)."""
    lines = b"".join(json.dumps(span_to_dict(s)).encode() + b"\n" for s in _spans(2_500))
    monkeypatch.setattr(sys, "stdin", _FailingStdin(lines, error))
    done = cli("db", "import", "-", "--db", sqlite_url)
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr == (
        "error: cannot read stdin after line 2,500: read failed; the first 2,000 span(s) are "
        "recorded, the batch in progress is not: run the same import again once it reads "
        "(spans already there are skipped)\n"
    )
    ledger = Ledger(sqlite_url)
    assert ledger.count() == 2_000
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
