"""The Python API before an upstream that drips bytes making no item: it times out.

httpx's read timeout waits for each read, so a server sending a byte every 0.1 s never
ran it out, and a call (and its caller) waited for as long as the server dripped. Each
item of an answer (an NDJSON line, a whole answer) must arrive whole within the timeout.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient, UpstreamTimeout
from ollama_meter.ledger import SpanFilter
from tests._raw_http import dripping

FINAL = {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True}
HI = [{"role": "user", "content": "hello there"}]


def _sync(client: Any, stream: bool) -> None:
    answer = client.chat(model="m", messages=HI, stream=stream)
    if stream:
        list(answer)


async def _async(client: Any, stream: bool) -> None:
    answer = await client.chat(model="m", messages=HI, stream=stream)
    if stream:
        async for _ in answer:
            pass


@pytest.mark.parametrize("flavour", ["sync", "async"])
# (A blank line in a stream the ollama client itself refuses at once: not JSON.)
@pytest.mark.parametrize(("stream", "drop"), [(True, b" "), (False, b" "), (False, b"\n")])
def test_an_upstream_dripping_bytes_that_make_no_item_times_out(
    db_url: str, monkeypatch: pytest.MonkeyPatch, flavour: str, stream: bool, drop: bytes
) -> None:
    monkeypatch.setenv("OMETER_UPSTREAM_TIMEOUT", "0.5")  # five drops in it
    monkeypatch.setenv("OMETER_RETRIES", "0")
    server = dripping(drop, lambda _: json.dumps(FINAL).encode() + b"\n")
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if flavour == "sync":
            with MeteredClient(host=host, db_url=db_url, department="sales") as client:
                with pytest.raises(UpstreamTimeout):
                    _sync(client, stream)
                spans = client.meter.ledger.latest(SpanFilter(), 10)
        else:

            async def run() -> list[Any]:
                async with AsyncMeteredClient(host=host, db_url=db_url, department="sales") as c:
                    with pytest.raises(UpstreamTimeout):
                        await _async(c, stream)
                    return c.meter.ledger.latest(SpanFilter(), 10)

            spans = asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    (span,) = spans
    assert (span.status, span.error_type) == ("error", "timeout")
