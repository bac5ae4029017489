"""``sys.exit()`` and Ctrl-C in a hook of the async client: the caller's, raised where it
awaits the call once the call is recorded, as from any line of its own; nothing else said."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from ollama_meter import AsyncMeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator

HI = [{"role": "user", "content": "say hi to the team"}]


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt], ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("when", ["on_start", "on_end"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_exit_in_an_async_clients_hook_is_raised_where_the_call_is_awaited_and_said_once(
    sqlite_url: str,
    emulator: OllamaEmulator,
    caplog: pytest.LogCaptureFixture,
    raised: type[BaseException],
    when: str,
    stream: bool,
) -> None:
    """``on_start`` raising ``SystemExit``: the exit left the loop from the task that opened the
    call in a thread, not from the caller's, which was then cancelled; collected, that task
    logged "Task exception was never retrieved" with the whole traceback, on stderr where
    logging is not set up, after a program's own clean ``sys.exit()``."""

    def hook(span: Any) -> None:
        raise raised

    async def called() -> None:
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url, **{when: hook}) as client:
            answer = await client.chat(model="llama3.1:8b", messages=HI, stream=stream)
            if stream:
                async for _ in answer:  # type: ignore[union-attr]
                    pass

    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        asyncio.run(called())
    except raised:
        pass  # not kept (pytest.raises would): its traceback holds what it went through
    else:
        raise AssertionError(f"{raised.__name__} was not raised")
    gc.collect()  # a task whose exception nobody took says so as it is collected
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    (span,) = AsyncMeteredClient(emulator.url, db_url=sqlite_url).meter.ledger.latest(
        SpanFilter(), 5
    )
    assert span.status == ("client_abort" if when == "on_start" else "ok")
