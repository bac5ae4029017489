"""An ``AsyncMeteredClient`` closed from a thread other than the one whose event loop made its
calls (a loop run in a worker thread, closed by the main thread's shutdown; a loop gone).

Its connections belong to the loop they were opened on. ``await close()`` closed only the
connections of the loop it ran on: those of the worker's loop stayed open, kept alive at
Ollama, until the process ended. Now every loop's connections are shut down at once, and
closed on their own loop while it runs (or here, once no loop can run them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_meter import AsyncMeteredClient, ClientClosed
from ollama_meter.testing import OllamaEmulator
from tests.test_client_closed_under import GENEROUS, _until

HI = [{"role": "user", "content": "hello"}]


def _established(port: int) -> set[int]:
    """The connections the server at ``port`` (this process's emulator) holds open, by the
    port each comes from."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def worker() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(GENEROUS)
            loop.close()


def _on(loop: asyncio.AbstractEventLoop, work: object) -> object:
    return asyncio.run_coroutine_threadsafe(work, loop).result(GENEROUS)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["whole", "streamed", "no model (list)"])
def test_closing_from_another_thread_closes_the_worker_loops_connections(
    emulator: OllamaEmulator,
    sqlite_url: str,
    worker: asyncio.AbstractEventLoop,
    how: str,
) -> None:
    client = AsyncMeteredClient(emulator.url, department="sales", db_url=sqlite_url)

    async def call() -> str:
        if how == "no model (list)":
            return str((await client.list()).models[0].model)
        if how == "streamed":
            return "".join(
                [
                    c.message.content
                    async for c in await client.chat(model="llama3.1:8b", messages=HI, stream=True)
                ]
            )
        return (await client.chat(model="llama3.1:8b", messages=HI)).message.content or ""

    before = _established(emulator.port)  # other tests' (the emulator is the session's)
    assert _on(worker, call())
    ours = _established(emulator.port) - before
    assert len(ours) == 1  # kept alive for the next call
    asyncio.run(client.close())  # the main thread's loop, not the worker's
    _until(lambda: not ours & _established(emulator.port), "the worker loop's connection closed")
    with pytest.raises(ClientClosed):
        _on(worker, call())
    assert worker.is_running()  # nothing broke in the worker's loop


def test_closing_after_the_worker_loop_is_gone_closes_its_connections(
    emulator: OllamaEmulator, sqlite_url: str, worker: asyncio.AbstractEventLoop
) -> None:
    client = AsyncMeteredClient(emulator.url, department="sales", db_url=sqlite_url)
    before = _established(emulator.port)
    _on(worker, client.chat(model="llama3.1:8b", messages=HI))
    ours = _established(emulator.port) - before
    assert len(ours) == 1
    worker.call_soon_threadsafe(worker.stop)
    _until(lambda: not worker.is_running(), "the worker loop stopped")
    asyncio.run(client.close())
    _until(lambda: not ours & _established(emulator.port), "the stopped loop's connection closed")
