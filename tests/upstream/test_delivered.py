"""Whether Ollama had the whole request of a call when its caller left (``upstream/_delivered``).

A call its caller leaves once Ollama had its whole request is charged its prompt (Ollama
was evaluating it); one left before, or refused, is charged nothing. The gateway's pool
says which, in the task that sent the request.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from ollama_meter.upstream import PooledUpstream
from ollama_meter.upstream._delivered import delivered

HELD_BODY = 16 << 20
"""More than the kernel holds for a server that reads nothing (its socket buffers and ours)."""


async def _server(status: int, *, read: bool = True) -> tuple[asyncio.Server, str]:
    """Reads a request whole (or nothing at all), then answers ``status``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not read:
            await asyncio.sleep(60)
        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        if lengths:
            await reader.readexactly(lengths[0])
        else:  # chunked
            await reader.readuntil(b"0\r\n\r\n")
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n\r\n{}" % status)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300_000),
    status=st.sampled_from([200, 201, 302, 400, 404, 429, 500, 503]),
)
def test_a_body_written_whole_is_delivered_unless_refused(size: int, status: int) -> None:
    async def run() -> bool:
        server, url = await _server(status)
        pool = PooledUpstream(url, timeout=10)
        try:
            response = await pool.request("POST", "/api/chat", body=b"x" * size)
            await pool.read(response)
            pool.finish(response, completed=True)
            return delivered()
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(run()) is (status < 400)


def test_a_body_the_server_has_not_taken_whole_is_not_delivered() -> None:
    """A caller who leaves while most of the request waits in the gateway's buffers (Ollama
    reads nothing) consumed nothing: Ollama never had the prompt."""

    async def run() -> bool:
        server, url = await _server(200, read=False)
        pool = PooledUpstream(url, timeout=10)
        try:

            async def call() -> bool:  # what the call's task knows once its caller left
                try:
                    await pool.request("POST", "/api/chat", body=b"x" * HELD_BODY)
                except asyncio.CancelledError:
                    return delivered()
                raise AssertionError("answered: the server read nothing")

            sending = asyncio.ensure_future(call())
            await asyncio.sleep(0.3)
            sending.cancel()
            return await sending
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(run()) is False


def test_no_body_and_a_stream_of_unknown_size_are_never_delivered() -> None:
    async def run() -> list[bool]:
        server, url = await _server(200)
        pool = PooledUpstream(url, timeout=10)

        async def parts():  # type: ignore[no-untyped-def]
            yield b"{}"

        said = []
        try:
            for body in (b"", None, parts()):
                response = await pool.request("POST", "/api/chat", body=body)
                await pool.read(response)
                pool.finish(response, completed=True)
                said.append(delivered())
        finally:
            await pool.aclose()
            server.close()
        return said

    assert asyncio.run(run()) == [False, False, False]
