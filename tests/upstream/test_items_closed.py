"""A stream's reader that stops at the answer's end leaves nothing for the event loop to close.

The gateway stops reading a stream at Ollama's ``done`` item, before the body's own end.
An async generator left suspended is closed by the event loop's finalizer: a thread-safe
wake-up of the loop and a task of its own, on every streamed call. ``items`` closes the
reads it made itself, when its reader closes it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import PooledUpstream, Refusal, RetryPolicy
from ollama_meter.upstream._frames import Frames

CHAT = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_items_closed_early_leaves_no_generator_to_the_loop(emulator: OllamaEmulator) -> None:
    async def run() -> list[Any]:
        hooks = sys.get_asyncgen_hooks()
        finalized: list[Any] = []

        def finalizer(agen: Any) -> None:
            finalized.append(agen)
            assert hooks.finalizer is not None
            hooks.finalizer(agen)

        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
        pool = PooledUpstream(emulator.url, timeout=10, retry=RetryPolicy(retries=0))
        try:
            attempts = pool.attempts("llama3.1:8b")
            sent = await pool.send(attempts, "/api/chat", body=json.dumps(CHAT).encode())
            assert not isinstance(sent, Refusal)
            batches = aiter(pool.items(sent, Frames(b"\n", host=pool.host)))
            first = await anext(batches)
            assert first  # an item came; the reader stops here, as at an answer's end
            await batches.aclose()
            pool.finish(sent, completed=False)
            attempts.end()
            await asyncio.sleep(0)
        finally:
            await pool.aclose()
            sys.set_asyncgen_hooks(*hooks)
        return [getattr(agen, "__qualname__", repr(agen)) for agen in finalized]

    assert asyncio.run(run()) == []
