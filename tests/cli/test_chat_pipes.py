"""``ometer chat`` whose reader goes away mid-reply (``| head -c1``): the call still ends whole."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import OllamaEmulator


def test_a_reader_that_leaves_mid_reply_ends_the_call_with_its_span_and_leaves_nothing_open(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """``ometer chat ... | head -c1``: the write that failed left the call's stream open, held
    by the traceback, so its span was written only as the interpreter shut down, after the
    process had let its journal go with the call still open in it: the next ``ometer``
    recorded it again as ``interrupted`` by a dead process, with a WARNING saying so."""
    env = {**os.environ, "OMETER_DB_URL": sqlite_url, "OLLAMA_HOST": emulator.url}
    emulator.token_latency = 0.1
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ollama_meter",
                "chat",
                "-m",
                "llama3.1:8b",
                "tell me a long story",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while not os.read(proc.stdout.fileno(), 1):  # `head -c1`: one byte, then gone
            assert time.monotonic() < deadline, "no reply came"
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=30)
    finally:
        emulator.token_latency = 0.0
    assert proc.returncode == 1 and stderr == b""  # quiet, as any command `| head` ends
    # A process that ends with no call open removes its journal: none is left for the next.
    journal = Path(f"{sqlite_url.removeprefix('sqlite:///')}.spool") / "journal"
    assert sorted(journal.glob("*")) == []
    (span,) = open_ledger(sqlite_url).latest(SpanFilter(), 5)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")
    assert span.output_tokens >= 1
