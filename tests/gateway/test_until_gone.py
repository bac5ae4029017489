"""``until_gone`` in process: the caller's hang-up cuts the work short in the caller's own task,
and leaves that task as it found it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ollama_meter.gateway._cycle import LEFT, hear_lost
from ollama_meter.gateway._slots import CallerGone, Heard, Streamed, until_gone


def test_a_hang_up_cancels_the_work_and_leaves_the_task_uncancelled() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        left = asyncio.Event()

        async def work() -> str:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("work cancelled")
                await asyncio.sleep(0)  # its handlers may still wait (a span written)
                raise
            return "done"

        async def hangup() -> None:
            await left.wait()

        asyncio.get_running_loop().call_later(0.01, left.set)
        with pytest.raises(CallerGone):
            await until_gone(work(), hangup)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        async with asyncio.timeout(1):  # a later wait of the same task is its own
            await asyncio.sleep(0.01)
        seen.append("went on")
        return seen

    assert asyncio.run(scenario()) == ["work cancelled", "went on"]


def test_work_that_ends_first_is_returned_and_a_later_hang_up_changes_nothing() -> None:
    async def scenario() -> str:
        left = asyncio.Event()

        async def hangup() -> None:
            await left.wait()

        async def work() -> str:
            await asyncio.sleep(0)
            return "answer"

        got = await until_gone(work(), hangup)
        left.set()
        await asyncio.sleep(0.01)  # the hang-up heard after: nothing of it reaches this task
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return got

    assert asyncio.run(scenario()) == "answer"


def test_an_outer_cancellation_stays_a_cancellation() -> None:
    async def scenario() -> None:
        async def hangup() -> None:
            await asyncio.Event().wait()

        await until_gone(asyncio.sleep(10), hangup)

    async def outer() -> None:
        task = asyncio.ensure_future(scenario())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(outer())


def test_work_that_takes_the_hang_ups_cancellation_and_answers_is_answered() -> None:
    async def scenario() -> str:
        async def hangup() -> None:
            await asyncio.sleep(0.01)

        async def work() -> str:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return "answered anyway"
            return "done"

        got = await until_gone(work(), hangup)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)
        return got

    assert asyncio.run(scenario()) == "answered anyway"


# -- the server's own news of a hang-up: a future it completes, shared by the call's waits --


def test_the_servers_hang_up_future_cuts_the_work_short_and_is_neither_cancelled_nor_reused() -> (
    None
):
    async def scenario() -> list[str]:
        seen: list[str] = []
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def work() -> str:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("work cancelled")
                raise
            return "done"

        asyncio.get_running_loop().call_later(0.01, left.set_result, None)
        with pytest.raises(CallerGone):
            await until_gone(work(), left)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        assert left.done() and not left.cancelled()
        with pytest.raises(CallerGone):  # the next wait of the call hears it at once
            await until_gone(asyncio.sleep(10), left)
        assert task.cancelling() == 0
        seen.append("went on")
        return seen

    assert asyncio.run(scenario()) == ["work cancelled", "went on"]


def test_work_that_ends_first_leaves_the_servers_future_pending_for_the_next_wait() -> None:
    async def scenario() -> tuple[str, str]:
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def work() -> str:
            await asyncio.sleep(0)
            return "answer"

        first = await until_gone(work(), left)
        assert not left.done()  # not cancelled: the connection's, not this wait's
        second = await until_gone(work(), left)
        left.set_result(None)
        await asyncio.sleep(0.01)  # heard after both: nothing of it reaches this task
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return first, second

    assert asyncio.run(scenario()) == ("answer", "answer")


def test_heard_reads_the_servers_future_and_leaves_it_as_it_was() -> None:
    async def scenario() -> list[bool]:
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heard = Heard(left)
        seen = [heard.gone, await heard.left()]
        heard.close()
        assert not left.cancelled()
        left.set_result(None)
        again = Heard(left)
        seen += [again.gone, await again.left()]
        again.close()
        return seen

    assert asyncio.run(scenario()) == [False, False, True, True]


class _Cycle:
    """As much of uvicorn's request cycle as ``hear_lost`` reads."""

    def __init__(self, *, disconnected: bool, left: asyncio.Future[None]) -> None:
        self.disconnected = disconnected
        self.scope = {LEFT: left}


def test_a_lost_connection_tells_only_a_request_its_cycle_was_told_of() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        told, untold = loop.create_future(), loop.create_future()
        hear_lost(_Cycle(disconnected=True, left=told))  # type: ignore[arg-type]
        hear_lost(_Cycle(disconnected=False, left=untold))  # type: ignore[arg-type]
        hear_lost(None)
        hear_lost(_Cycle(disconnected=True, left=told))  # type: ignore[arg-type]  # twice: once
        return told.done(), untold.done()

    assert asyncio.run(scenario()) == (True, False)


def _scope(left: asyncio.Future[None]) -> dict[str, object]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, LEFT: left}


async def _no_message() -> dict[str, object]:
    await asyncio.Event().wait()  # the server's news is the future: nothing reads for it
    raise AssertionError


def test_a_streamed_answer_is_sent_whole_and_leaves_the_servers_future_as_it_was() -> None:
    async def scenario() -> list[object]:
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent: list[object] = []

        async def items() -> AsyncIterator[bytes]:
            yield b"a\n"
            yield b"b\n"

        async def send(message: dict[str, object]) -> None:
            sent.append(message.get("body", message["type"]))

        await Streamed(items())(_scope(left), _no_message, send)
        assert not left.done()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return sent

    assert asyncio.run(scenario()) == ["http.response.start", b"a\n", b"b\n", b""]


def test_a_hang_up_stops_a_silent_stream_which_hears_it_as_a_cancellation() -> None:
    async def scenario() -> list[object]:
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seen: list[object] = []

        async def items() -> AsyncIterator[bytes]:
            yield b"a\n"
            try:
                await asyncio.sleep(10)  # Ollama silent: only the hang-up can stop it
            except asyncio.CancelledError:
                seen.append("stream cancelled")
                raise
            yield b"never\n"

        async def send(message: dict[str, object]) -> None:
            seen.append(message.get("body", message["type"]))

        asyncio.get_running_loop().call_later(0.01, left.set_result, None)
        async with asyncio.timeout(5):
            await Streamed(items())(_scope(left), _no_message, send)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        seen.append("went on")
        return seen

    assert asyncio.run(scenario()) == ["http.response.start", b"a\n", "stream cancelled", "went on"]
