"""Streams still open as the interpreter exits: each call is one span, written at the exit.

Only a real interpreter's exit shows it, so each case is a process of its own. A stream
left to be collected was closed as the interpreter came apart, or never: its span was lost,
or written by a later process as ``interrupted`` (its prompt estimated, none of the answer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices

LEFT_OPEN = """
import asyncio, collections, sys, threading
from ollama_meter import AsyncMeteredClient, MeteredClient

host, url, case = sys.argv[1:]
HI = [{"role": "user", "content": "say hi to the team, at length"}]

if case == "kept in a list":  # collected late, as the modules are torn down
    client = MeteredClient(host, db_url=url)

    def opened():
        stream = client.chat(model="llama3.1:8b", messages=HI, stream=True)
        next(stream), next(stream)
        return stream

    kept = collections.deque([[opened()]])
elif case == "read by a daemon thread":  # never resumed
    client = MeteredClient(host, db_url=url)
    read = threading.Event()

    def reader():
        stream = client.chat(model="llama3.1:8b", messages=HI, stream=True)
        next(stream), next(stream)
        read.set()
        threading.Event().wait()

    threading.Thread(target=reader, daemon=True).start()
    read.wait()
elif case == "kept in a multiprocessing child":  # which leaves by os._exit: no atexit
    import multiprocessing

    client = MeteredClient(host, db_url=url)
    kept = []

    def opened():
        stream = client.chat(model="llama3.1:8b", messages=HI, stream=True)
        next(stream), next(stream)
        kept.append(stream)

    child = multiprocessing.get_context("fork").Process(target=opened)
    child.start()
    child.join()
    assert child.exitcode == 0
else:  # on an event loop never shut down: nothing closes its async generators

    async def opened():
        client = AsyncMeteredClient(host, db_url=url)
        stream = await client.chat(model="llama3.1:8b", messages=HI, stream=True)
        await anext(stream), await anext(stream)
        return stream

    kept = asyncio.new_event_loop().run_until_complete(opened())
"""


@pytest.mark.parametrize(
    "case",
    [
        "kept in a list",
        "read by a daemon thread",
        "on a loop never shut down",
        "kept in a multiprocessing child",
    ],
)
def test_a_stream_left_open_at_exit_is_one_abort_written_as_the_process_exits(
    emulator: OllamaEmulator, tmp_path: Path, case: str
) -> None:
    script = tmp_path / "left.py"
    script.write_text(LEFT_OPEN)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = open_ledger(url)
    ledger.add_price_rule(token_prices())
    run = subprocess.run(
        [sys.executable, str(script), emulator.url, url, case],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (run.returncode, run.stderr) == (0, "")
    # Nothing left in its journal, for a later process to record as interrupted.
    with ledger.journal.orphans() as left:
        assert left == []
    spans = ledger.latest(SpanFilter(), 5)
    # What Ollama sent: the two chunks read, and the one read ahead.
    assert [(s.status, s.output_tokens, s.token_source) for s in spans] == [
        ("client_abort", 3, "estimated")
    ]
    (span,) = spans
    assert span.cost_total == (span.input_tokens * 1000 + 3 * 2000)


def test_an_async_stream_dropped_after_its_loop_closed_is_recorded_then(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A loop run with ``run_until_complete`` and closed leaves no loop to close the streams
    it had open: one dropped then was left in the journal (for a later process to charge as
    ``interrupted``), and gone from memory. Its call now ends as it is dropped."""
    import asyncio
    import gc

    from ollama_meter import AsyncMeteredClient

    client = AsyncMeteredClient(emulator.url, db_url=sqlite_url)

    async def opened() -> object:
        stream = await client.chat(
            model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        await anext(stream), await anext(stream)  # type: ignore[call-overload]
        return stream

    loop = asyncio.new_event_loop()
    stream = loop.run_until_complete(opened())
    loop.close()
    del stream
    gc.collect()
    spans = client.meter.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.output_tokens, s.token_source) for s in spans] == [
        ("client_abort", 3, "estimated")
    ]
