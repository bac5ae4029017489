"""A kept-alive connection Ollama closed loses no call; a call Ollama may have taken is not sent twice.

Ollama closes a connection idle for a while (and every one when it restarts); a request
that goes out on it as it closes is lost before Ollama reads it. Through the gateway, with
``OMETER_RETRIES=0``, that was a 502 "cannot reach Ollama" from a server that was up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ollama_meter.errors import UpstreamError
from ollama_meter.upstream import CircuitBreaker, PooledUpstream, Refusal, RetryPolicy
from tests._raw_http import FINAL, KeptAlive

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": False}


@pytest.fixture(params=[False, True], ids=["closed", "reset"])
def reset(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def servers() -> Iterator[list[KeptAlive]]:
    made: list[KeptAlive] = []
    yield made
    for server in made:
        server.close()


def _pooled_calls(server: KeptAlive, calls: int) -> tuple[list[Any], CircuitBreaker]:
    """``calls`` chats one after another through one pool that retries nothing."""
    breaker = CircuitBreaker(server.url, threshold=1)

    async def run() -> list[Any]:
        pool = PooledUpstream(server.url, timeout=10, breaker=breaker, retry=RetryPolicy(retries=0))
        outcomes: list[Any] = []
        try:
            for _ in range(calls):
                attempts = pool.attempts("m")
                try:
                    sent = await pool.send(attempts, "/api/chat", body=json.dumps(CHAT).encode())
                except UpstreamError as error:
                    outcomes.append(error)
                    continue
                assert not isinstance(sent, Refusal)
                outcomes.append(json.loads(await pool.read(sent)))
                pool.finish(sent, completed=True)
                attempts.end()
                await asyncio.sleep(0.05)  # the pool has the connection back
        finally:
            await pool.aclose()
        return outcomes

    return asyncio.run(run()), breaker


def test_a_call_on_a_connection_ollama_closed_goes_again_on_a_new_one(
    servers: list[KeptAlive], reset: bool
) -> None:
    """Retries off, the call lost on the kept-alive connection is sent once more on a new
    connection, and answered; nobody's breaker counts a failure."""
    server = KeptAlive(lambda connection, request: request == 2, reset=reset)
    servers.append(server)
    outcomes, breaker = _pooled_calls(server, 2)
    assert outcomes == [FINAL, FINAL]
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat"), (2, 1, "/api/chat")]
    assert (breaker.failures(), breaker.failures("m")) == (0, 0)


def test_a_call_lost_on_a_new_connection_is_not_sent_again(
    servers: list[KeptAlive], reset: bool
) -> None:
    """A new connection that closes without an answer may have been Ollama taking the call
    (and dying): with retries off it is sent once, and fails as unreachable."""
    server = KeptAlive(lambda connection, request: True, reset=reset)
    servers.append(server)
    outcomes, breaker = _pooled_calls(server, 1)
    assert isinstance(outcomes[0], UpstreamError) and outcomes[0].error_type == "connection"
    assert server.requests == [(1, 1, "/api/chat")]
    assert breaker.failures() == 1


def test_a_call_is_sent_again_once_only_and_on_a_new_connection(
    servers: list[KeptAlive], reset: bool
) -> None:
    """Ollama closed the kept-alive connection, then the new one too: the call went out
    twice, never a third time, and failed."""
    server = KeptAlive(lambda connection, request: connection > 1 or request == 2, reset=reset)
    servers.append(server)
    outcomes, _ = _pooled_calls(server, 2)
    assert outcomes[0] == FINAL
    assert isinstance(outcomes[1], UpstreamError) and outcomes[1].error_type == "connection"
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat"), (2, 1, "/api/chat")]


@pytest.mark.parametrize("partial", [b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\ncontent-type: app"])
def test_a_call_answered_in_part_on_a_kept_alive_connection_is_not_sent_again(
    servers: list[KeptAlive], reset: bool, partial: bytes
) -> None:
    """Part of an answer's head, then the kept-alive connection closed or reset: Ollama took
    the call, so it is not sent again (a reset says nothing of the bytes before it: it went
    twice, computed twice)."""
    server = KeptAlive(lambda connection, request: request == 2, reset=reset, partial=partial)
    servers.append(server)
    outcomes, breaker = _pooled_calls(server, 2)
    assert outcomes[0] == FINAL
    assert isinstance(outcomes[1], UpstreamError)
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat")]
    assert breaker.failures() + breaker.failures("m") == 1  # the one attempt, once


def test_many_calls_at_once_on_a_pool_of_closed_connections_each_go_again_once_at_most(
    servers: list[KeptAlive],
) -> None:
    """20 calls fill the pool with 20 kept-alive connections; then 40 at once: 20 go on
    those, which Ollama closes, and are sent again once each; 20 go on new connections,
    closed too, and are not sent again (each task's own connection decides, not another's)."""
    calls = 20
    server = KeptAlive(lambda connection, request: request == 2 or connection > calls)
    servers.append(server)
    pool = PooledUpstream(
        server.url, timeout=10, breaker=CircuitBreaker(server.url, threshold=10**6),
        retry=RetryPolicy(retries=0),
    )  # fmt: skip

    async def one() -> Any:
        try:
            sent = await pool.send(pool.attempts("m"), "/api/chat", body=json.dumps(CHAT).encode())
        except UpstreamError as error:
            return error.error_type
        assert not isinstance(sent, Refusal)
        answer = json.loads(await pool.read(sent))
        pool.finish(sent, completed=True)
        return answer

    async def run() -> tuple[list[Any], list[Any]]:
        try:
            first = await asyncio.gather(*(one() for _ in range(calls)))
            await asyncio.sleep(0.1)  # the pool has the connections back
            return first, await asyncio.gather(*(one() for _ in range(2 * calls)))
        finally:
            await pool.aclose()

    first, second = asyncio.run(run())
    assert first == [FINAL] * calls
    assert second == ["connection"] * (2 * calls)
    assert server.connections == 3 * calls
    kept = [r for c, r, _ in server.requests if c <= calls]
    assert sorted(kept) == [1] * calls + [2] * calls
    assert len(server.requests) == 4 * calls  # 20, then 20 lost + 20 again + 20 new


def _sdk_calls(server: KeptAlive, calls: int, *, aio: bool, stream: bool) -> list[Any]:
    """``calls`` chats one after another through the ``ollama`` client transport (the CLI's,
    the Python API's), which retries nothing."""
    from ollama_meter.upstream import Upstream

    upstream = Upstream(
        server.url, retry=RetryPolicy(retries=0), breaker=CircuitBreaker(server.url)
    )
    request = {key: value for key, value in CHAT.items() if key != "stream"}

    def once() -> Any:
        if stream:
            return [part.message.content for part in upstream.stream("chat", request)]
        return upstream.call("chat", request).message.content

    async def aonce() -> Any:
        if stream:
            return [part.message.content async for part in upstream.astream("chat", request)]
        return (await upstream.acall("chat", request)).message.content

    async def run() -> list[Any]:
        outcomes: list[Any] = []
        for _ in range(calls):
            try:
                outcomes.append(await aonce())
            except UpstreamError as error:
                outcomes.append(error)
        await upstream.aclose()
        return outcomes

    if aio:
        return asyncio.run(run())
    outcomes: list[Any] = []
    for _ in range(calls):
        try:
            outcomes.append(once())
        except UpstreamError as error:
            outcomes.append(error)
    upstream.close()
    return outcomes


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_ollama_clients_call_on_a_closed_connection_goes_again_on_a_new_one(
    servers: list[KeptAlive], reset: bool, aio: bool, stream: bool
) -> None:
    """The CLI and the Python API said "cannot reach Ollama" of a server that was up."""
    server = KeptAlive(lambda connection, request: request == 2, reset=reset)
    servers.append(server)
    outcomes = _sdk_calls(server, 2, aio=aio, stream=stream)
    assert outcomes == ([["hi"], ["hi"]] if stream else ["hi", "hi"])
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat"), (2, 1, "/api/chat")]


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_the_ollama_clients_call_lost_on_a_new_connection_is_not_sent_again(
    servers: list[KeptAlive], reset: bool, aio: bool
) -> None:
    server = KeptAlive(lambda connection, request: True, reset=reset)
    servers.append(server)
    outcomes = _sdk_calls(server, 1, aio=aio, stream=False)
    assert isinstance(outcomes[0], UpstreamError) and outcomes[0].error_type == "connection"
    assert server.requests == [(1, 1, "/api/chat")]


def test_the_ollama_clients_call_is_sent_again_once_only(
    servers: list[KeptAlive], reset: bool
) -> None:
    server = KeptAlive(lambda connection, request: connection > 1 or request == 2, reset=reset)
    servers.append(server)
    outcomes = _sdk_calls(server, 2, aio=False, stream=False)
    assert outcomes[0] == "hi"
    assert isinstance(outcomes[1], UpstreamError) and outcomes[1].error_type == "connection"
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat"), (2, 1, "/api/chat")]


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("partial", [b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\ncontent-type: app"])
def test_the_ollama_clients_call_answered_in_part_is_not_sent_again(
    servers: list[KeptAlive], reset: bool, aio: bool, partial: bytes
) -> None:
    """Part of an answer's head, then the kept-alive connection closed: Ollama took the call,
    so it is not sent again (httpcore says "without sending a response" of that too; it
    went twice, computed twice)."""
    server = KeptAlive(lambda connection, request: request == 2, reset=reset, partial=partial)
    servers.append(server)
    outcomes = _sdk_calls(server, 2, aio=aio, stream=False)
    assert outcomes[0] == "hi"
    assert isinstance(outcomes[1], UpstreamError)
    assert server.requests == [(1, 1, "/api/chat"), (1, 2, "/api/chat")]


def test_a_call_right_after_ollama_restarted_on_its_port_is_answered() -> None:
    """Ollama restarted between two calls, before the gateway's loop heard its connections
    close: the second went on a dead one, a 502 with retries off."""
    from ollama_meter.testing import OllamaEmulator

    first = OllamaEmulator().start()
    restarted = OllamaEmulator(port=first.port)
    chat = {"model": "llama3.1:8b", "messages": CHAT["messages"], "stream": False}

    async def run() -> list[int]:
        breaker = CircuitBreaker(first.url, threshold=1)
        pool = PooledUpstream(first.url, timeout=10, breaker=breaker, retry=RetryPolicy(0))
        statuses = []
        try:
            for emulator in (first, restarted):
                emulator.start()
                sent = await pool.send(
                    pool.attempts("m"), "/api/chat", body=json.dumps(chat).encode()
                )
                assert not isinstance(sent, Refusal)
                await pool.read(sent)
                pool.finish(sent, completed=True)
                statuses.append(sent.status)
                emulator.stop()  # no await between: the loop has not heard the connection close
        finally:
            await pool.aclose()
        return statuses

    try:
        assert asyncio.run(run()) == [200, 200]
        assert len(restarted.requests_to("/api/chat")) == 1
    finally:
        first.stop()
        restarted.stop()
