"""The gateway's pooled transport hands on every byte Ollama sent, even when the body breaks off."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings, strategies as st

from ollama_meter.errors import StreamError, UpstreamError, UpstreamTimeout
from ollama_meter.upstream import CircuitBreaker, PooledUpstream, Refusal, RetryPolicy

ITEMS = [b'{"response": "a", "done": false}\n', b'{"response": "b", "done": false}\n']


def _breaking_server() -> tuple[socket.socket, threading.Event]:
    """Answers one request with a chunked body of ITEMS, then hangs up mid-body."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n")
            conn.sendall(b"transfer-encoding: chunked\r\n\r\n")
            for item in ITEMS:
                conn.sendall(b"%x\r\n%s\r\n" % (len(item), item))
        closed.set()  # no terminating chunk: the body broke off

    threading.Thread(target=serve, daemon=True).start()
    return listener, closed


def test_a_body_that_breaks_off_still_hands_on_what_arrived_before() -> None:
    """aiohttp raises a broken body's error before the bytes buffered ahead of it; a stream
    read late (a busy gateway) lost every item Ollama had sent, not only the last."""
    listener, closed = _breaking_server()
    host = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def read() -> tuple[bytes, BaseException | None]:
        pool = PooledUpstream(host, timeout=10, breaker=CircuitBreaker(host))
        try:
            response = await pool.send(pool.attempts("m"), "/api/generate", body=b"{}")
            assert not isinstance(response, Refusal)
            await asyncio.to_thread(closed.wait, 10)
            await asyncio.sleep(0.2)  # aiohttp has seen the hang-up before anything is read
            got = b""
            try:
                async for data in pool.chunks(response):
                    got += data
            except StreamError as error:
                return got, error
            return got, None
        finally:
            await pool.aclose()

    got, error = asyncio.run(read())
    listener.close()
    assert got == b"".join(ITEMS)
    assert isinstance(error, StreamError) and "broke off" in str(error)


@settings(max_examples=60, deadline=None)
@given(
    rounds=st.lists(st.lists(st.binary(min_size=1, max_size=40), max_size=4), max_size=6),
    last=st.lists(st.binary(min_size=1, max_size=40), max_size=4),
    timeout=st.booleans(),
)
def test_every_byte_is_handed_on_once_however_the_body_arrives_and_breaks(
    rounds: list[list[bytes]], last: list[bytes], timeout: bool
) -> None:
    """Pieces arrive in any grouping, some read before the break and some still buffered
    when it comes (a reset, or a read timeout): what the relay gets is the body, once."""
    from types import SimpleNamespace

    import aiohttp
    from aiohttp.base_protocol import BaseProtocol

    async def relay() -> tuple[bytes, BaseException | None]:
        loop = asyncio.get_running_loop()
        content = aiohttp.StreamReader(BaseProtocol(loop), 64, loop=loop)
        pool = PooledUpstream("http://127.0.0.1:9", timeout=10)
        chunks = aiter(pool.chunks(SimpleNamespace(content=content)))  # type: ignore[arg-type]
        got = b""
        for pieces in rounds:
            for piece in pieces:
                content.feed_data(piece)
            if pieces:  # what has arrived is read before more comes
                got += await anext(chunks)
        for piece in last:
            content.feed_data(piece)
        broke = aiohttp.ServerTimeoutError() if timeout else aiohttp.ClientPayloadError("reset")
        content.set_exception(broke)
        try:
            async for data in chunks:
                got += data
        except UpstreamError as error:
            return got, error
        return got, None

    got, error = asyncio.run(relay())
    assert got == b"".join(piece for pieces in [*rounds, last] for piece in pieces)
    assert isinstance(error, UpstreamTimeout if timeout else StreamError)


def test_a_refusal_cut_short_by_a_hang_up_drops_its_connection() -> None:
    """Ollama's error answer is being read when the caller hangs up (the call is cancelled):
    the connection is dropped then, not held until the garbage collector finds it."""
    listener = socket.create_server(("127.0.0.1", 0))
    answered, dropped = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100\r\n\r\n{")
            answered.set()
            conn.settimeout(10)
            try:
                if conn.recv(1) == b"":
                    dropped.set()
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    host = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def hang_up() -> bool:
        pool = PooledUpstream(host, timeout=30, breaker=CircuitBreaker(host))
        sending = asyncio.ensure_future(pool.send(pool.attempts("m"), "/api/chat", body=b"{}"))
        await asyncio.to_thread(answered.wait, 10)
        await asyncio.sleep(0.05)  # the rest of the body is awaited now
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        gone = await asyncio.to_thread(dropped.wait, 10)  # `sending` still holds its frames
        await pool.aclose()
        return gone

    try:
        assert asyncio.run(hang_up())
    finally:
        listener.close()


@contextlib.contextmanager
def _no_file_left() -> Iterator[None]:
    """This process at its open-file limit: the next socket is refused EMFILE, for real."""
    import errno
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    taken: list[int] = []
    try:
        while True:
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_running_out_of_files_is_this_process_trouble_not_an_unreachable_ollama() -> None:
    """With every descriptor taken (idle connections to a gateway), the call to Ollama was
    'cannot reach Ollama ... is it running?', retried, and counted against its breaker: a
    healthy Ollama was refused to everyone once files were free again. Both transports."""
    from ollama_meter.errors import ServerBusy
    from ollama_meter.testing import OllamaEmulator
    from ollama_meter.upstream import Upstream

    request = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}
    with OllamaEmulator() as emulator:
        breaker = CircuitBreaker(emulator.url, threshold=1)

        async def pooled() -> BaseException:
            pool = PooledUpstream(emulator.url, timeout=10, breaker=breaker)
            try:
                with _no_file_left():
                    return await _raised(
                        pool.send(pool.attempts("llama3.1:8b"), "/api/chat", body=b"{}")
                    )
            finally:
                await pool.aclose()

        async def _raised(work: Any) -> BaseException:
            try:
                await work
            except BaseException as exc:
                return exc
            raise AssertionError("the call went through")

        sdk = Upstream(emulator.url, breaker=breaker)
        with _no_file_left():
            try:
                sdk.call("chat", request)
                raise AssertionError("the call went through")
            except ServerBusy as exc:
                sdk_error: BaseException = exc
        for error in (asyncio.run(pooled()), sdk_error):
            assert isinstance(error, ServerBusy), repr(error)
            assert (error.error_type, error.retry_after) == ("server_busy", 1)
            assert str(error).startswith("this process ran out of open files (its limit:")
        assert breaker.failures() == 0 and len(emulator.requests_to("/api/chat")) == 0


@contextlib.contextmanager
def _silent_host() -> Iterator[str]:
    """An address whose connects go unanswered (a host powered off behind a firewall that
    drops them): a listener whose accept queue is full, so the kernel drops new SYNs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    filling = []
    for _ in range(4):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        filling.append(sock)
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for sock in [*filling, listener]:
            sock.close()


def test_a_connect_that_is_never_answered_is_an_unreachable_host_not_a_slow_one() -> None:
    """Nothing answered at the address, as with a refused connect: the host's circuit counts
    it (not the model's) and the fleet takes the server out, rather than sending it the next
    calls, each to wait out the connect timeout, while the message blamed OMETER_UPSTREAM_TIMEOUT."""
    with _silent_host() as host:

        async def call() -> tuple[UpstreamError, int, int]:
            breaker = CircuitBreaker(host)
            pool = PooledUpstream(
                host,
                timeout=30,
                connect_timeout=0.2,
                breaker=breaker,
                retry=RetryPolicy(retries=0),
            )
            try:
                await pool.send(pool.attempts("m"), "/api/chat", body=b"{}")
            except UpstreamError as error:
                return error, breaker.failures(), breaker.failures("m")
            finally:
                await pool.aclose()
            raise AssertionError("a connect nobody answered was answered")

        error, host_failures, model_failures = asyncio.run(call())
    assert error.error_type == "connection"
    assert str(error).startswith(f"cannot reach Ollama at {host} (")
    assert (host_failures, model_failures) == (1, 0)
