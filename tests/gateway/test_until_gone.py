"""``until_gone`` in process: the caller's hang-up cuts the work short in the caller's own task,
and leaves that task as it found it."""

from __future__ import annotations

import asyncio

import pytest

from ollama_meter.gateway._slots import CallerGone, until_gone


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
