"""An async stream left with ``break`` as ``asyncio.run`` ends: one span, nothing on stderr.

About one run in three printed asyncio's "an error occurred during closing of asynchronous
generator ... already running" (``ollama.AsyncClient`` alone, none): the loop's finalizer
task for the metered stream was cancelled before it ran as ``asyncio.run`` ended, and the
loop's shutdown then closed every layer at once while each layer closed the next.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import OllamaEmulator

RUNS = 5

LEFT = """
import asyncio, sys
from ollama_meter import AsyncMeteredClient

async def main():
    client = AsyncMeteredClient(sys.argv[1], db_url=sys.argv[2])
    if sys.argv[3] == "chat":
        stream = await client.chat(
            model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    else:
        stream = await client.generate(model="llama3.1:8b", prompt="hi", stream=True)
    async for part in stream:
        break

asyncio.run(main())
"""


@pytest.mark.parametrize("operation", ["chat", "generate"])
def test_a_stream_left_with_break_as_asyncio_run_ends_is_quiet_and_one_abort(
    emulator: OllamaEmulator, tmp_path: Path, operation: str
) -> None:
    script = tmp_path / "left.py"
    script.write_text(LEFT)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for _ in range(RUNS):
        run = subprocess.run(
            [sys.executable, str(script), emulator.url, url, operation],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (run.returncode, run.stderr) == (0, "")
    spans = open_ledger(url).latest(SpanFilter(), 2 * RUNS)
    assert [(span.operation, span.status, span.error_type) for span in spans] == [
        (operation, "client_abort", "client_abort")
    ] * RUNS
