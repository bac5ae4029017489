"""The calls that run no model (``pull``, ``push``, ``create``...) on a client closed by another
thread, on one closed before their stream is read, and on an Ollama that is gone or lies.

They went through an ``ollama`` client of their own, without the transport the model calls
go through (``upstream/_sdk_kept.py``): a pull streaming its progress while another thread
closed the client slept on in its socket until Ollama's next progress line (a big layer:
minutes), and a stream taken before ``close()`` and read after it raised httpx's
``RuntimeError`` ("the client has been closed"). Now they go through the same transport:
each is cut there and then with :class:`ClientClosed`, and Ollama sees its caller leave;
what Ollama itself says wrong reads as ``ollama.Client`` has it.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ollama
import pytest

from ollama_meter import AsyncMeteredClient, ClientClosed, MeteredClient
from ollama_meter.testing import OllamaEmulator
from tests._raw_http import RawServer
from tests.test_client_closed_elsewhere import _established, worker  # noqa: F401  (a fixture)
from tests.test_client_closed_under import GENEROUS, LONG, _until

CUT = "closed while this call to Ollama ran"
Progress = Callable[[Any], Any]
STREAMED: dict[str, Progress] = {
    "pull": lambda c: c.pull("qwen3:8b", stream=True),
    "push": lambda c: c.push("llama3.1:8b", stream=True),
    "create": lambda c: c.create("mine:1", from_="llama3.1:8b", stream=True),
}


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_progress_streaming_in_one_thread_is_cut_when_another_closes_the_client(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    client = MeteredClient(emulator.url, db_url=sqlite_url)
    emulator.progress_latency = LONG  # its first line comes, then no more in this test
    heard: list[str] = []
    raised: list[BaseException] = []
    first = threading.Event()

    def follow() -> None:
        try:
            for line in STREAMED[name](client):
                heard.append(line.status)
                first.set()
        except BaseException as exc:
            raised.append(exc)

    before = _established(emulator.port)  # other tests' (the emulator is the session's)
    caller = threading.Thread(target=follow, daemon=True)
    caller.start()
    assert first.wait(GENEROUS), "no progress came"
    ours = _established(emulator.port) - before
    assert len(ours) == 1
    client.close()
    caller.join(GENEROUS)
    assert not caller.is_alive(), f"the {name} still waits on Ollama, its client closed"
    assert len(heard) == 1
    (error,) = raised
    assert isinstance(error, ClientClosed) and CUT in str(error), repr(error)
    _until(lambda: emulator.hangups == 1, "Ollama saw its caller leave")
    _until(lambda: not ours & _established(emulator.port), "its connection closed")


def test_a_whole_pull_waiting_on_ollama_is_cut_when_another_thread_closes_the_client(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    client = MeteredClient(emulator.url, db_url=sqlite_url)
    emulator.progress_latency = LONG
    raised: list[BaseException] = []

    def pull() -> None:
        try:
            client.pull("qwen3:8b")
        except BaseException as exc:
            raised.append(exc)

    caller = threading.Thread(target=pull, daemon=True)
    caller.start()
    _until(lambda: [r.path for r in emulator.requests] == ["/api/pull"], "Ollama has the pull")
    client.close()
    caller.join(GENEROUS)
    assert not caller.is_alive(), "the pull still waits on Ollama, its client closed"
    (error,) = raised
    assert isinstance(error, ClientClosed) and CUT in str(error), repr(error)


def test_an_async_pull_on_a_worker_loop_is_cut_when_another_thread_closes_the_client(
    sqlite_url: str,
    emulator: OllamaEmulator,
    worker: asyncio.AbstractEventLoop,  # noqa: F811
) -> None:
    client = AsyncMeteredClient(emulator.url, db_url=sqlite_url)
    emulator.progress_latency = LONG
    heard: list[str] = []
    first = threading.Event()

    async def follow() -> BaseException | None:
        try:
            async for line in await client.pull("qwen3:8b", stream=True):
                heard.append(line.status)
                first.set()
        except BaseException as exc:
            return exc
        return None

    pulled = asyncio.run_coroutine_threadsafe(follow(), worker)
    assert first.wait(GENEROUS), "no progress came"
    asyncio.run(client.close())  # the main thread's loop, not the worker's
    error = pulled.result(GENEROUS)  # raises TimeoutError while it still waits on Ollama
    assert isinstance(error, ClientClosed) and CUT in str(error), repr(error)
    assert heard == ["pulling manifest"]
    _until(lambda: emulator.hangups == 1, "Ollama saw its caller leave")
    assert worker.is_running()


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_a_stream_taken_before_close_and_read_after_it_sends_nothing(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    client = MeteredClient(emulator.url, db_url=sqlite_url)
    stream = STREAMED[name](client)
    client.close()
    with pytest.raises(ClientClosed, match="is closed; make a new one"):
        next(stream)
    assert emulator.requests == []


def test_an_async_stream_taken_before_close_and_read_after_it_sends_nothing(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    async def main() -> None:
        client = AsyncMeteredClient(emulator.url, db_url=sqlite_url)
        stream = await client.pull("qwen3:8b", stream=True)
        await client.close()
        with pytest.raises(ClientClosed, match="is closed; make a new one"):
            await anext(stream)

    asyncio.run(main())
    assert emulator.requests == []


def _chunked(*lines: bytes, end: bool = True) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
    return head + body + (b"0\r\n\r\n" if end else b"")


MANIFEST = b'{"status":"pulling manifest"}\n'
LIES = {
    "a line that is no JSON": _chunked(MANIFEST, b"<html>bad gateway</html>\n"),
    "an error mid-stream": _chunked(MANIFEST, b'{"error":"max retries exceeded: EOF"}\n'),
    "a stream cut short": _chunked(MANIFEST, end=False),
    "a 500 before any progress": b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
    b'application/json\r\nContent-Length: 18\r\n\r\n{"error":"broken"}',
}


@pytest.fixture(params=[*sorted(LIES), "an Ollama that hangs up", "no Ollama there"])
def lying(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an Ollama that answers a pull with one of :data:`LIES`, or hangs up on it
    unanswered, or of none (a port held, listening to nobody: every connection refused)."""
    if request.param == "no Ollama there":
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            yield f"http://127.0.0.1:{held.getsockname()[1]}"
        return
    hangs_up = request.param == "an Ollama that hangs up"
    server = RawServer(lambda: b"" if hangs_up else LIES[request.param], threaded=True)
    try:
        yield server.url
    finally:
        server.close()


def _outcome(pulled: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        answer = pulled()
        return (
            "answered",
            [line.status for line in answer] if inspect.isgenerator(answer) else answer,
        )
    except Exception as exc:  # what the caller sees: its type and words
        return (type(exc), str(exc))


@pytest.mark.parametrize("stream", [True, False])
def test_a_pull_from_an_ollama_gone_or_lying_fails_as_the_ollama_clients_does(
    sqlite_url: str, lying: str, stream: bool
) -> None:
    expected = _outcome(lambda: ollama.Client(lying).pull("qwen3:8b", stream=stream))
    with MeteredClient(lying, db_url=sqlite_url) as client:
        assert _outcome(lambda: client.pull("qwen3:8b", stream=stream)) == expected
    assert expected[0] is not ClientClosed and expected[0] != "answered"


def test_an_async_pull_from_an_ollama_gone_or_lying_fails_as_the_ollama_clients_does(
    sqlite_url: str, lying: str
) -> None:
    async def outcome(client: Any) -> tuple[Any, ...]:
        try:
            return (
                "answered",
                [line.status async for line in await client.pull("x:1", stream=True)],
            )
        except Exception as exc:
            return (type(exc), str(exc))

    async def main() -> list[tuple[Any, ...]]:
        async with AsyncMeteredClient(lying, db_url=sqlite_url) as client:
            return [await outcome(ollama.AsyncClient(lying)), await outcome(client)]

    expected, got = asyncio.run(main())
    assert got == expected
    assert expected[0] is not ClientClosed and expected[0] != "answered"


def test_eight_threads_managing_models_as_another_closes_the_client_all_end_leaving_nothing_open(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The race a close meets: threads opening connections, sending, reading progress."""
    emulator.progress_latency = 0.002
    for _ in range(4):
        _closed_under_eight_threads(sqlite_url, emulator)


def _closed_under_eight_threads(sqlite_url: str, emulator: OllamaEmulator) -> None:
    before = _established(emulator.port)  # other tests' (the emulator is the session's)
    client = MeteredClient(emulator.url, db_url=sqlite_url)
    answered: list[object] = []
    raised: list[BaseException] = []
    calls: list[Callable[[], object]] = [
        lambda: list(client.pull("qwen3:8b", stream=True))[-1],
        client.list,
        lambda: client.show("llama3.1:8b"),
        lambda: client.create("mine:1", from_="llama3.1:8b"),
    ]

    def work(kind: int) -> None:
        while True:
            try:
                answered.append(calls[kind % len(calls)]())
            except BaseException as exc:
                raised.append(exc)
                return

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    _until(lambda: len(answered) >= 16, "the threads call")
    client.close()
    for thread in threads:
        thread.join(GENEROUS)
    assert not any(thread.is_alive() for thread in threads)
    assert [repr(e) for e in raised if not isinstance(e, ClientClosed)] == []
    assert len(raised) == 8
    _until(lambda: _established(emulator.port) <= before, "every connection closed")
