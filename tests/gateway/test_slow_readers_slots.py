"""A caller slow to read its stream holds no slot once Ollama's answer has ended.

The slot stands for Ollama's work. A caller that read its streamed answer slowly (a slow
link, or on purpose, never still long enough to be hung up on) kept its slot until it had
read the last byte, though Ollama had finished long before: every other department's call
waited behind its reading, the fair queue's promise broken by a reader, not a flood. Now the
gateway reads the answer on ahead of the caller, within a bound per call and one for the
whole gateway, and gives the slot back when Ollama's answer has ended; past a bound it reads
no further, as before, and the caller keeps its slot.

The app runs in the test's own event loop (raw ASGI), so a caller's ``send`` can block for
exactly as long as the test says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter._logging import Throttled
from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions, _ahead, create_app
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.meter import Meter
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator, expected_reply

MODEL = dataclasses.replace(DEFAULT_MODELS[0], reply_tokens=5_000)
"""An answer of some 650 KB streamed: many reads, within a call's read-ahead (1 MiB)."""
READ = 256 * 1024
"""More than one read of Ollama's answer takes (aiohttp's buffer, and a read past it)."""


def _scope(body: bytes, state: dict[str, Any], department: str | None) -> dict[str, Any]:
    named = [] if department is None else [(b"x-ometer-department", department.encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"), *named],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
        "state": dict(state),
    }


class Caller:
    """One call to the app; its reading stops after its first part of the body until
    :meth:`reads` (``slow``), else it reads everything at once."""

    def __init__(
        self,
        app: Any,
        state: dict[str, Any],
        body: dict[str, Any],
        *,
        slow: bool,
        department: str | None = None,
    ):
        self.department = department
        self.parts: list[bytes] = []
        self.reading = asyncio.Event()
        if not slow:
            self.reading.set()
        self.task = asyncio.ensure_future(self._call(app, state, json.dumps(body).encode()))

    async def _call(self, app: Any, state: dict[str, Any], body: bytes) -> None:
        asked = False
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                return
            if self.parts:  # its first part taken, it reads no more until told
                await self.reading.wait()
            self.parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

        await app(_scope(body, state, self.department), receive, send)

    def reads(self) -> None:
        self.reading.set()

    def items(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in b"".join(self.parts).splitlines() if line]


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL.name, "messages": [{"role": "user", "content": "hi"}], **extra}


async def _one_slot(emulator_url: str, sqlite_url: str, scenario: Any, slots: int = 1) -> Any:
    settings = load_settings(db_url=sqlite_url, ollama_host=emulator_url, slots=slots)
    meter = Meter.from_settings(settings, source="gateway")
    app = create_app(settings, GatewayOptions(), meter=meter)
    async with app.router.lifespan_context(app) as state:
        return await scenario(app, dict(state))


async def _until(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"still not {what} after 10 s")


@pytest.fixture
def emulator() -> Any:
    with OllamaEmulator(models=[MODEL]) as emu:
        yield emu


def test_a_slow_reader_gives_its_slot_back_when_ollamas_answer_has_ended(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    async def scenario(app: Any, state: dict[str, Any]) -> None:
        slow = Caller(app, state, _chat(stream=True), slow=True)
        await _until(lambda: slow.parts, "streaming")
        other = Caller(app, state, _chat(stream=False, options={"num_predict": 3}), slow=False)
        # Served while the slow reader still reads its first part: Ollama has finished.
        await asyncio.wait_for(asyncio.shield(other.task), 10)
        assert not slow.task.done()
        assert other.items()[0]["eval_count"] == 3
        assert state["gateway"].relay.ahead.memory.held > 0  # the rest of the slow one's answer
        slow.reads()
        await asyncio.wait_for(slow.task, 10)
        items = slow.items()
        assert items[-1]["done"] is True
        assert items[-1]["eval_count"] == MODEL.reply_tokens
        assert sum(1 for item in items if not item["done"]) == MODEL.reply_tokens
        assert state["gateway"].relay.ahead.memory.held == 0

    asyncio.run(_one_slot(emulator.url, sqlite_url, scenario))
    spans = open_ledger(sqlite_url).latest(SpanFilter(), 10)
    assert sorted((s.stream, s.status, s.output_tokens) for s in spans) == [
        (False, "ok", 3),
        (True, "ok", MODEL.reply_tokens),
    ]
    (other,) = [s for s in spans if not s.stream]
    assert other.queue_ns is not None and other.queue_ns < 5_000_000_000


def test_an_answer_past_a_calls_memory_is_held_in_a_file_and_the_slot_goes_back(
    emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer larger than a call's memory (1 MiB; here 16 KiB) kept its slot until its
    slow reader had read all but its last MiB: another department's call waited behind it.
    The rest is held in a file of the call's own, and the slot goes back at Ollama's end."""
    monkeypatch.setattr(_ahead, "CALL_BYTES", 16 * 1024)

    async def scenario(app: Any, state: dict[str, Any]) -> None:
        ahead = state["gateway"].relay.ahead
        slow = Caller(app, state, _chat(stream=True), slow=True, department="slow")
        await _until(lambda: slow.parts, "streaming")
        other = Caller(app, state, _chat(stream=False, options={"num_predict": 3}), slow=False)
        await asyncio.wait_for(asyncio.shield(other.task), 10)
        assert not slow.task.done()
        assert 0 < ahead.memory.held <= 16 * 1024 + READ  # its bound and one read past it
        assert ahead.disk.held > 400_000  # the rest of its 650 KB, in its file
        assert ahead.disk.flows() == {("default", "slow"): ahead.disk.held}
        slow.reads()
        await asyncio.wait_for(slow.task, 10)
        items = slow.items()
        said = "".join(item["message"]["content"] for item in items)
        assert said == expected_reply(MODEL, _chat()["messages"]).content
        assert items[-1]["eval_count"] == MODEL.reply_tokens
        assert other.items()[0]["eval_count"] == 3
        assert (ahead.memory.held, ahead.disk.held) == (0, 0)
        assert (ahead.memory.flows(), ahead.disk.flows()) == ({}, {})

    asyncio.run(_one_slot(emulator.url, sqlite_url, scenario))


def test_past_its_memory_and_file_a_slow_reader_keeps_its_slot_and_both_stay_bounded(
    emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ahead, "CALL_BYTES", 16 * 1024)
    monkeypatch.setattr(_ahead, "CALL_SPILL_BYTES", 32 * 1024)

    async def scenario(app: Any, state: dict[str, Any]) -> None:
        ahead = state["gateway"].relay.ahead
        slow = Caller(app, state, _chat(stream=True), slow=True)
        await _until(lambda: slow.parts, "streaming")
        other = Caller(app, state, _chat(stream=False, options={"num_predict": 3}), slow=False)
        await asyncio.sleep(1)
        assert not other.task.done()  # Ollama waits on the slow reader: the slot is its own
        assert 0 < ahead.memory.held <= 16 * 1024 + READ
        assert 0 < ahead.disk.held <= 32 * 1024 + READ
        slow.reads()
        await asyncio.wait_for(asyncio.gather(slow.task, other.task), 10)
        assert slow.items()[-1]["eval_count"] == MODEL.reply_tokens
        assert other.items()[0]["eval_count"] == 3
        assert (ahead.memory.held, ahead.disk.held) == (0, 0)

    asyncio.run(_one_slot(emulator.url, sqlite_url, scenario))


LONG = dataclasses.replace(DEFAULT_MODELS[1], reply_tokens=40_000)
"""An answer of some 5 MB streamed."""


def test_one_departments_slow_reader_leaves_read_ahead_for_anothers(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots. A department's slow reader of a long answer filled the gateway's one pool
    (here 2 MB, no files): another department's slow reader could read only one read ahead
    and kept the other slot, and that department's next call waited behind both readers.
    Now a flow holds at most its part of the pool (alone, half): the other's answer is read
    ahead whole, its slot given back, the next call served."""
    monkeypatch.setattr(_ahead, "CALL_BYTES", 8 << 20)
    monkeypatch.setattr(_ahead, "GATEWAY_BYTES", 2_000_000)
    monkeypatch.setattr(_ahead, "SPILL_BYTES", 0)

    async def scenario(app: Any, state: dict[str, Any]) -> None:
        memory = state["gateway"].relay.ahead.memory
        long = {**_chat(stream=True), "model": LONG.name}
        hog = Caller(app, state, long, slow=True, department="hog")
        await _until(lambda: hog.parts, "streaming")
        await _until(lambda: memory.held >= 1_000_000, "read ahead")
        slow = Caller(app, state, _chat(stream=True), slow=True, department="other")
        await _until(lambda: slow.parts, "streaming")
        after = _chat(stream=False, options={"num_predict": 3})
        next_call = Caller(app, state, after, slow=False, department="other")
        await asyncio.wait_for(asyncio.shield(next_call.task), 10)
        assert next_call.items()[0]["eval_count"] == 3
        assert memory.flows()[("default", "hog")] <= 1_000_000 + READ
        hog.reads()
        slow.reads()
        await asyncio.wait_for(asyncio.gather(hog.task, slow.task), 20)
        assert hog.items()[-1]["eval_count"] == LONG.reply_tokens
        assert slow.items()[-1]["eval_count"] == MODEL.reply_tokens
        assert memory.held == 0

    with OllamaEmulator(models=[MODEL, LONG]) as emulator:
        asyncio.run(_one_slot(emulator.url, sqlite_url, scenario, slots=2))


class Broke(Exception):
    """What broke a source's read."""


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(
        st.tuples(
            st.lists(st.integers(1, 900), max_size=12),
            st.booleans(),
            st.integers(0, 4),
            st.sampled_from("ab"),
        ),
        min_size=1,
        max_size=5,
    ),
    call_bytes=st.integers(1, 3000),
    spill_bytes=st.integers(0, 3000),
    gateway_bytes=st.integers(1, 5000),
    disk_bytes=st.integers(0, 5000),
)
def test_answers_read_ahead_arrive_whole_in_order_within_their_bounds(
    answers: list[tuple[list[int], bool, int, str]],
    call_bytes: int,
    spill_bytes: int,
    gateway_bytes: int,
    disk_bytes: int,
) -> None:
    """Several calls of two flows read ahead of slow consumers on one gateway's pools: each
    consumer gets its batches in order, then the end or what broke the read; each call holds
    at most its bounds and one read (in memory and in its file), each flow at most its
    weight's part of each pool with a part of weight 1 left (w / (w + 1)) and one read a call, all of them at most the pool and one read each; ``ended``
    is told once, when the source has ended; every byte is given back, every flow forgotten."""
    most = max((size for sizes, _, _, _ in answers for size in sizes), default=0)
    record = most + 8  # in a file: the batch's frame count and its one frame's length

    async def main() -> None:
        pools = _ahead.Pools(gateway_bytes, disk_bytes)
        readers = {flow: sum(1 for *_, f in answers if f == flow) for flow in "ab"}
        weights = {"a": 1, "b": 3}  # a flow's part of a pool: w / (w + 1) of it at most

        def bounded() -> None:
            for pool, one in ((pools.memory, most), (pools.disk, record)):
                assert pool.held <= pool.limit + len(answers) * one
                for flow, held in pool.flows().items():
                    w = weights[str(flow)]
                    assert (w + 1) * held <= w * pool.limit + (w + 1) * readers[str(flow)] * one

        async def source(sizes: list[int], broken: bool) -> AsyncGenerator[list[bytes], None]:
            for n, size in enumerate(sizes):
                yield [bytes([n % 256]) * size]
                await asyncio.sleep(0)
            if broken:
                raise Broke("the stream broke")

        async def consume(sizes: list[int], broken: bool, pause: int, flow: str) -> None:
            ended: list[None] = []
            reader = _ahead.ReadAhead(
                source(sizes, broken), pools.room(flow, weights[flow]), lambda: ended.append(None)
            )
            reader._limit, reader._spill_limit = call_bytes, spill_bytes
            got: list[bytes] = []
            try:
                while True:
                    for _ in range(pause):  # a slow caller: the reader runs on meanwhile
                        await asyncio.sleep(0)
                        assert reader._held <= call_bytes + most
                        spill = reader._spill
                        assert spill is None or spill.written <= spill_bytes + record
                        bounded()
                    try:
                        got += await reader.next()
                    except StopAsyncIteration:
                        assert not broken
                        break
                    except Broke:
                        assert broken
                        break
            finally:
                await reader.aclose()
            assert got == [bytes([n % 256]) * size for n, size in enumerate(sizes)]
            assert ended == [None]

        await asyncio.gather(*(consume(*answer) for answer in answers))
        assert (pools.memory.held, pools.disk.held) == (0, 0)
        assert (pools.memory.flows(), pools.disk.flows()) == ({}, {})

    asyncio.run(main())


def test_one_flows_slow_readers_leave_room_for_anothers() -> None:
    """One department's slow readers (any number, reading nothing) filled the one pool of a
    gateway's read-ahead, and every other caller kept its slot as it read: now a flow holds at
    most its part of each pool, and another department's answer is read ahead whole."""

    async def main() -> None:
        pools = _ahead.Pools(64 * 1024, 256 * 1024)

        async def endless() -> AsyncGenerator[list[bytes], None]:
            while True:
                yield [b"x" * 1000]
                await asyncio.sleep(0)

        async def answer() -> AsyncGenerator[list[bytes], None]:
            for _ in range(40):
                yield [b"y" * 1000]
                await asyncio.sleep(0)

        hogs = [
            _ahead.ReadAhead(endless(), pools.room(("t", "hog")), lambda: None) for _ in range(8)
        ]
        for hog in hogs:
            await hog.next()  # its caller took a first part, then reads no more
        for _ in range(400):
            await asyncio.sleep(0)
        assert pools.memory.flows()[("t", "hog")] <= 32 * 1024 + 8 * 1000
        assert pools.disk.flows()[("t", "hog")] <= 128 * 1024 + 8 * 1008
        ended = asyncio.Event()
        other = _ahead.ReadAhead(answer(), pools.room(("t", "other")), ended.set)
        await other.next()
        await asyncio.wait_for(ended.wait(), 5)  # all of it read ahead: its slot back
        got = [await other.next() for _ in range(39)]
        assert got == [[b"y" * 1000]] * 39
        await other.aclose()
        for hog in hogs:
            await hog.aclose()
        assert (pools.memory.held, pools.disk.held) == (0, 0)

    asyncio.run(main())


def test_a_file_that_cannot_be_written_leaves_the_answer_whole_in_memory_bounds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk full (or no descriptor left) as a call's file is written: the batch is not
    half written, the answer arrives whole and in order, read on in memory within its bound
    and then as the caller takes it; every byte is given back."""
    writes = 0
    pwrite = os.pwrite

    def full(fd: int, data: Any, at: int) -> int:  # the 4th record: half of it, then full
        nonlocal writes
        writes += 1
        if writes == 4:
            return pwrite(fd, data[: len(data) // 2], at)
        if writes > 4:
            raise OSError(28, "No space left on device")
        return pwrite(fd, data, at)

    monkeypatch.setattr(_ahead.os, "pwrite", full)
    monkeypatch.setattr(_ahead, "_unspilled", Throttled(logging.getLogger("ollama_meter.gateway")))

    async def main() -> None:
        pools = _ahead.Pools(10_000, 10_000)

        async def source() -> AsyncGenerator[list[bytes], None]:
            for n in range(60):
                yield [bytes([n]) * 300, bytes([n]) * 7]

        reader = _ahead.ReadAhead(source(), pools.room(("t", "d")), lambda: None)
        reader._limit = 1_000
        got = [await reader.next()]
        for _ in range(200):
            await asyncio.sleep(0)
        assert reader._held <= 1_000 + 307
        assert pools.disk.held == 3 * (12 + 307)  # three records, none half written
        assert reader._spill is not None and os.fstat(reader._spill._fd).st_size == 3 * 319
        got += [await reader.next() for _ in range(59)]
        with pytest.raises(StopAsyncIteration):
            await reader.next()
        await reader.aclose()
        assert got == [[bytes([n]) * 300, bytes([n]) * 7] for n in range(60)]
        assert (pools.memory.held, pools.disk.held) == (0, 0)

    with caplog.at_level("WARNING", "ollama_meter.gateway"):
        asyncio.run(main())
    assert "No space left on device" in caplog.text
