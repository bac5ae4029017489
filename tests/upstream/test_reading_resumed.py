"""Reading an answer from Ollama: resumed only where it was paused, every byte handed on.

aiohttp resumed reading after each read of a body, paused or not: each item of a stream
fed the parser nothing and told the transport to read on (5% of a streamed call's work on
the gateway's event loop). The gateway's connections resume only a paused read.
"""

from __future__ import annotations

import asyncio

import pytest

from ollama_meter.upstream import PooledUpstream
from ollama_meter.upstream._kept import _Counted

ITEM = b'{"message":{"role":"assistant","content":"word "},"done":false}\n'


async def _chunked(pieces: list[bytes], pause: float) -> tuple[asyncio.Server, str]:
    """Answers a request with ``pieces``, each its own chunk, ``pause`` s apart."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body: {}
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read(pieces: list[bytes], *, pause: float, slow: float) -> bytes:
    server, url = await _chunked(pieces, pause)
    pool = PooledUpstream(url, timeout=10)
    got = bytearray()
    try:
        response = await pool.request("POST", "/api/chat", body=b"{}")
        async for data in pool.chunks(response):
            got += data
            if slow:
                await asyncio.sleep(slow)  # a slow reader: aiohttp pauses the connection
        pool.finish(response, completed=True)
    finally:
        await pool.aclose()
        server.close()
    return bytes(got)


def test_a_stream_read_as_it_comes_feeds_the_parser_nothing_between_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = 0
    feed = _Counted.data_received

    def counted(self: _Counted, data: bytes) -> None:
        nonlocal empty
        empty += not data
        feed(self, data)

    monkeypatch.setattr(_Counted, "data_received", counted)
    assert asyncio.run(_read([ITEM] * 30, pause=0.002, slow=0)) == ITEM * 30
    assert empty == 0


@pytest.mark.parametrize(
    "pieces",
    [[ITEM] * 12_000, [b"x" * (1 << 20)] * 6, [b"y" * 70_000, ITEM, b"z" * 300_000] * 4],
    ids=["many small chunks", "large chunks", "mixed"],
)
def test_a_read_paused_for_a_slow_reader_resumes_and_loses_nothing(pieces: list[bytes]) -> None:
    """More than aiohttp holds for a reader (its high-water bytes and chunks) pauses the
    connection; read on, it resumes, and every byte arrives once, in order."""
    assert asyncio.run(_read(pieces, pause=0, slow=0.02)) == b"".join(pieces)
