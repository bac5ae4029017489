"""A whole answer leaves in one write: its head (status line and headers) with its body.

Written apart, a call's answer was two segments on the wire, so a client woke twice for it
(once for the head, once for the body) and the gateway gave its core up to it in between.
A streamed answer's head still leaves at once, before its first item, and a head is never
lost: a HEAD answer, or an app that fails after starting its answer, still writes it.

The server's protocol is driven here with a transport that records what it is asked to
write (the socket's place), so the writes are counted exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.responses import Response, StreamingResponse
from uvicorn.server import ServerState

from ollama_meter.gateway import server_config
from ollama_meter.gateway._slots import LastPart, Streamed


class Wire:
    """A socket's transport: what the server wrote, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 11434), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


async def _served(app: Any, request: bytes, wire: Wire | None = None) -> Wire:
    config = server_config(app, host="127.0.0.1", port=11434)
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    wire = wire or Wire()
    protocol.connection_made(wire)  # type: ignore[arg-type]
    protocol.data_received(request)
    async with asyncio.timeout(5):
        while not (protocol.cycle and protocol.cycle.response_complete) and not wire.closed:
            await asyncio.sleep(0.001)
    protocol.connection_lost(None)
    return wire


GET = b"GET /x HTTP/1.1\r\nhost: localhost\r\n\r\n"
BODY = b'{"model":"llama3.1:8b","done":true}'


def test_a_whole_answer_is_one_write_of_its_head_and_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Response(BODY, media_type="application/json")(scope, receive, send)

    wire = asyncio.run(_served(app, GET))
    assert len(wire.writes) == 1
    head, _, body = wire.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: %d" % len(BODY) in head
    assert body == BODY


def test_a_head_answer_still_writes_its_head() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Response(BODY, media_type="application/json")(scope, receive, send)

    wire = asyncio.run(_served(app, b"HEAD /x HTTP/1.1\r\nhost: localhost\r\n\r\n"))
    assert len(wire.writes) == 1
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_answer_sends_its_head_before_its_first_item() -> None:
    wire = Wire()
    writes_before_first: list[int] = []

    async def items() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.01)  # the model's first token takes a while
        writes_before_first.append(len(wire.writes))
        yield b'{"done":false}\n'
        yield b'{"done":true}\n'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await StreamingResponse(items(), media_type="application/x-ndjson")(scope, receive, send)

    asyncio.run(_served(app, GET, wire))
    assert writes_before_first == [1]  # the head alone, as the stream began
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in wire.writes[0]
    assert b"".join(wire.writes[1:]).endswith(b"0\r\n\r\n")


@pytest.mark.filterwarnings("ignore")
def test_an_app_failing_after_its_head_still_writes_the_head_then_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"10")],
            }
        )
        raise RuntimeError("broke after the head")

    wire = asyncio.run(_served(app, GET))
    assert wire.closed
    assert len(wire.writes) == 1
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_answers_last_part_leaves_with_its_end() -> None:
    """The relay marks the item that ends an answer (:class:`LastPart`): it is written with
    the body's end (the chunked encoding's last chunk), so the client wakes once for both."""

    async def items() -> AsyncIterator[bytes]:
        yield b'{"done":false}\n'
        yield LastPart(b'{"done":true}\n')

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Streamed(items(), media_type="application/x-ndjson")(scope, receive, send)

    wire = asyncio.run(_served(app, GET))
    assert wire.writes[-1] == b'e\r\n{"done":true}\n\r\n0\r\n\r\n'
    assert wire.writes[1] == b'f\r\n{"done":false}\n\r\n'
    assert len(wire.writes) == 3  # the head, the first item, the last item with the end


def test_a_streamed_answer_with_no_last_part_ends_as_before() -> None:
    async def items() -> AsyncIterator[bytes]:
        yield b'{"done":true}\n'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Streamed(items(), media_type="application/x-ndjson")(scope, receive, send)

    wire = asyncio.run(_served(app, GET))
    assert wire.writes[1:] == [b'e\r\n{"done":true}\n\r\n', b"0\r\n\r\n"]
