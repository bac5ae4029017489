"""The request bodies one gateway holds at once are bounded: a flood of large prompts waits,
then gets 503, where it used to take the machine's memory (and the OOM killer the gateway)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, settings, strategies as st
from starlette.requests import ClientDisconnect

from ollama_meter.gateway import _memory
from ollama_meter.gateway._memory import BodyMemory, NoRoom, take
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

_OUTCOMES = st.sampled_from(["answer", "slow", "fail", "cancel", "leave"])


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(st.tuples(st.integers(0, 150), _OUTCOMES), max_size=12))
def test_the_room_is_never_overdrawn_and_always_given_back(
    requests: list[tuple[int, str]],
) -> None:
    """However a request ends (answered at once or late, failed, its task cancelled as when
    the client leaves, its connection lost), its room comes back; no moment holds more than
    the most. A body whose connection is lost while it waits for room ends its wait then, and
    is never told ``NoRoom`` (it waited on for nobody, to be refused as ``server_busy``)."""
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await take(scope, scope["size"])
        seen.append(memory.held)
        if scope["outcome"] == "leave":
            await scope[_memory.GONE]  # the app hears it its own way, once it reads
            return
        if scope["outcome"] == "fail":
            raise RuntimeError("the call failed")
        slow = 0.03 if scope["outcome"] == "slow" else 3600  # slow: answered past the wait
        await asyncio.sleep(0 if scope["outcome"] == "answer" else slow)

    memory = BodyMemory(app, most=200, wait=0.01)

    async def one(size: int, outcome: str) -> str:
        scope: dict[str, Any] = {"type": "http", "size": size, "outcome": outcome}
        if outcome == "leave":  # its connection is lost before its wait could end
            scope[_memory.GONE] = gone = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.001, gone.set_result, None)
        call = asyncio.ensure_future(memory(scope, None, None))
        if outcome == "cancel":
            await asyncio.sleep(0.001)
            call.cancel()
        try:
            await call
        except (RuntimeError, asyncio.CancelledError):
            return "ended"
        except NoRoom:
            return "no room"
        except ClientDisconnect:
            return "left"
        return "answered"

    async def run() -> list[str]:
        return list(await asyncio.gather(*(one(*r) for r in requests)))

    ends = asyncio.run(run())
    assert memory.held == 0
    assert all(held <= 200 for held in seen)
    fits = sum(size for size, _ in requests) <= 200
    assert "no room" not in ends or not fits  # refused only when all at once could not fit
    for (_, outcome), end in zip(requests, ends, strict=True):
        assert end in (
            ("left", "answered") if outcome == "leave" else ("answered", "ended", "no room")
        )


def test_a_hang_up_already_due_when_the_wait_ends_is_heard_before_the_refusal() -> None:
    """A process paused past a body's wait (a loaded machine) while its caller's hang-up sat in
    the loop's queue refused it for want of room: a ``server_busy`` span for a caller who had
    left. The refusal comes only after a turn of the loop, so the hang-up is heard first."""

    async def run() -> None:
        memory = BodyMemory(lambda *_: None, most=100, wait=0)  # the wait is over at once
        await memory.hold({"type": "http"}, 100)  # another request holds all the room
        gone = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(gone.set_result, None)  # due, not yet heard
        with pytest.raises(ClientDisconnect):
            await memory.hold({"type": "http", _memory.GONE: gone}, 1)
        with pytest.raises(NoRoom):  # with no hang-up, still refused
            await memory.hold({"type": "http"}, 1)

    asyncio.run(run())


def _memory_of(gw: Gateway) -> BodyMemory:
    assert gw.server is not None
    app: Any = gw.server.config.loaded_app
    for _ in range(10):  # uvicorn's wrapper, Starlette, its middleware stack, ...
        if isinstance(app, BodyMemory):
            return app
        app = getattr(app, "middleware_stack", None) or getattr(app, "app", None)
    raise AssertionError("the gateway app has no BodyMemory middleware")


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30  # a wait, not a measure
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _room_filled(gw: Any, emulator: OllamaEmulator) -> tuple[Any, str, bytes, list[socket.socket]]:
    """Eight calls of a 1,000-byte room each (the room: 8,000 bytes) waiting on a hung Ollama,
    each holding its body's room: the room full. The memory, the body, the request as sent,
    and the eight callers' sockets."""
    body = json.dumps(
        {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x" * 880}]}
    )
    assert 900 < len(body) <= 1000
    assert gw.client.post("/api/chat", content=body).status_code == 200  # builds the app
    memory = _memory_of(gw)
    assert memory.most == 8000
    _until(lambda: memory.held == 0, "an answered call kept its room")  # given back after
    emulator.inject(Fault.HANG, times=8)
    address = (urlsplit(gw.url).hostname, urlsplit(gw.url).port)
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
    )
    callers = [socket.create_connection(address, timeout=30) for _ in range(8)]
    for caller in callers:
        caller.sendall(request)  # each waits on a hung Ollama, its body held
    _until(lambda: memory.held == 8 * len(body), "the eight calls did not take their room")
    return memory, body, request, callers


def test_bodies_past_the_room_wait_then_get_503_with_a_span(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memory, "ROOM_WAIT_S", 0.3)
    gw = serve_on(emulator.url, sqlite_url, config={"slots": 8}, max_body_bytes=1000)
    memory, body, _, callers = _room_filled(gw, emulator)
    refused = httpx.post(f"{gw.url}/api/chat", content=body, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "holds as many request bodies as it takes (8,000 bytes" in refused.json()["error"]
    _until(lambda: len(gw.ledger.latest(SpanFilter(), 5)) == 2, "the refusal left no span")
    latest = gw.ledger.latest(SpanFilter(), 1)[0]
    assert (latest.status, latest.error_type, latest.http_status) == ("error", "server_busy", 503)
    small = httpx.post(f"{gw.url}/api/chat", content=b'{"model": 5}', timeout=30)
    assert small.status_code == 400  # read (12 bytes still fit), and refused for what it says
    for caller in callers:
        caller.close()
    _until(lambda: memory.held == 0, "the callers left and their room did not come back")
    assert httpx.post(f"{gw.url}/api/chat", content=body, timeout=30).status_code == 200


def test_a_caller_that_hangs_up_while_its_body_waits_for_room_ends_its_wait_at_once() -> None:
    """A body waiting for room is read by nobody, so no ``http.disconnect`` tells of its
    caller leaving: the wait went on to its end (30 s) for nobody, then said ``NoRoom``.
    The connection's loss (:data:`_memory.GONE`) ends it at once; the room is untouched."""
    answer = asyncio.Event()
    ends: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await take(scope, scope["size"])
        await answer.wait()

    memory = BodyMemory(app, most=100, wait=3600)

    async def one(scope: dict[str, Any]) -> None:
        try:
            await memory({"type": "http", **scope}, None, None)
            ends[scope["name"]] = "answered"
        except ClientDisconnect:
            ends[scope["name"]] = "gone"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        holder = asyncio.ensure_future(one({"name": "holder", "size": 100}))
        for _ in range(10):
            await asyncio.sleep(0)
        leaver = asyncio.ensure_future(one({"name": "leaver", "size": 10, _memory.GONE: gone}))
        stayer = asyncio.ensure_future(one({"name": "stayer", "size": 10}))
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(memory._waiting) == 2 and memory.held == 100
        gone.set_result(None)  # the leaver's connection is lost
        await asyncio.wait_for(leaver, 5)  # at once: not when the room comes back
        assert ends == {"leaver": "gone"}
        assert len(memory._waiting) == 1 and memory.held == 100
        answer.set()
        await asyncio.wait_for(asyncio.gather(holder, stayer), 5)

    asyncio.run(run())
    assert ends == {"leaver": "gone", "holder": "answered", "stayer": "answered"}
    assert memory.held == 0 and memory._waiting == []


def test_a_caller_that_hangs_up_waiting_for_room_is_a_client_abort_at_once(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the wire: the span was written 30 s later, as ``server_busy``/503."""
    # A wait for room far past _until's 30 s: only its ending with the caller ends it in time.
    monkeypatch.setattr(_memory, "ROOM_WAIT_S", 600.0)
    gw = serve_on(emulator.url, sqlite_url, config={"slots": 8}, max_body_bytes=1000)
    memory, body, request, callers = _room_filled(gw, emulator)
    try:
        leaver = socket.create_connection(callers[0].getpeername(), timeout=30)
        leaver.sendall(request)
        _until(lambda: len(memory._waiting) == 1, "the ninth body did not wait for room")
        leaver.close()
        _until(lambda: not memory._waiting, "the wait went on for a caller that hung up")
        # Its span is written once its wait has ended (the warm-up call's is the other).
        _until(lambda: len(gw.ledger.latest(SpanFilter(), 5)) == 2, "the leaver left no span")
        span = gw.ledger.latest(SpanFilter(), 1)[0]
        assert (span.status, span.error_type, span.http_status) == (
            "client_abort",
            "client_abort",
            499,
        )
        assert memory.held == 8 * len(body)  # the leaver took no room
    finally:
        for caller in callers:
            caller.close()
    _until(lambda: memory.held == 0, "the callers left and their room did not come back")


def test_a_body_promised_and_not_sent_holds_only_what_came(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room taken as a Content-Length promised it let eight callers that declare the most
    and send nothing shut everyone out; it is taken as the bytes arrive."""
    monkeypatch.setattr(_memory, "ROOM_WAIT_S", 0.3)
    gw = serve_on(emulator.url, sqlite_url, max_body_bytes=1000)
    body = json.dumps({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]})
    assert gw.client.post("/api/chat", content=body).status_code == 200
    memory = _memory_of(gw)
    _until(lambda: memory.held == 0, "an answered call kept its room")
    address = (urlsplit(gw.url).hostname, urlsplit(gw.url).port)
    promised = b'POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"mo'
    stalled = [socket.create_connection(address, timeout=30) for _ in range(12)]
    try:
        for caller in stalled:
            caller.sendall(promised)
        _until(lambda: memory.held == 12 * 4, "the stalled callers' bytes were not counted")
        assert httpx.post(f"{gw.url}/api/chat", content=body, timeout=30).status_code == 200
    finally:
        for caller in stalled:
            caller.close()
    _until(lambda: memory.held == 0, "the stalled callers left and their room did not come back")


def test_a_body_of_more_objects_than_any_call_needs_is_refused_before_it_is_all_read(
    sqlite_app: Gateway,
) -> None:
    """30 MB of empty messages (10 million objects) took the gateway to 7.3 GB and held its
    event loop for 77 s; it is refused at the 100,001st object, with a span."""
    from ollama_meter.gateway._json import MAX_OBJECTS
    from ollama_meter.gateway._requests import BadRequest, parse_request

    def body(objects: int) -> bytes:
        messages = b",".join([b'{"role":"user","content":"hi"}'] * (objects - 1))
        return b'{"model":"llama3.1:8b","messages":[' + messages + b"]}"

    assert len(parse_request("/api/chat", body(MAX_OBJECTS)).body["messages"]) == MAX_OBJECTS - 1
    with pytest.raises(BadRequest, match="holds more than 100,000 objects"):
        parse_request("/api/chat", body(MAX_OBJECTS + 1))
    flood = b'{"model":"llama3.1:8b","messages":[' + b",".join([b"{}"] * 10_000_000) + b"]}"
    reply = sqlite_app.client.post("/v1/chat/completions", content=flood)
    assert reply.status_code == 400
    assert "holds more than 100,000 objects" in reply.json()["error"]["message"]
    (span,) = sqlite_app.ledger.latest(SpanFilter(), 5)
    assert (span.error_type, span.request_model) == ("bad_request", "")


def _lists_in(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(map(_lists_in, value))
    if isinstance(value, dict):
        return sum(map(_lists_in, value.values()))
    return 0


_HOSTILE_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\,:a\n\u00e9\u2028'), max_size=12)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_HOSTILE_TEXT, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, ascii_only=st.booleans(), spaced=st.booleans())
def test_the_arrays_of_a_body_are_counted_exactly_whatever_its_strings_hold(
    value: Any, ascii_only: bool, spaced: bool
) -> None:
    """Brackets, quotes and backslashes inside strings are text, not arrays."""
    from ollama_meter.gateway._json import arrays_in

    separators = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    assert arrays_in(raw) == _lists_in(value)


def test_a_body_of_more_arrays_than_any_call_needs_is_refused_before_it_is_read(
    sqlite_app: Gateway, emulator: OllamaEmulator
) -> None:
    """32 MB of empty token lists (11 million arrays) as an embedding's input took the
    gateway 770 MB and 4 s to check, and was sent on as a request; objects were bounded,
    arrays were not. It is refused with a span, and a prompt full of brackets is not."""
    from ollama_meter.gateway._json import MAX_ARRAYS
    from ollama_meter.gateway._requests import BadRequest, parse_request

    def body(arrays: int) -> bytes:
        inputs = b",".join([b"[1]"] * (arrays - 1))
        return b'{"model":"nomic-embed-text","input":[' + inputs + b"]}"

    assert len(parse_request("/v1/embeddings", body(MAX_ARRAYS)).body["input"]) == MAX_ARRAYS - 1
    with pytest.raises(BadRequest, match="holds more than 100,000 arrays"):
        parse_request("/v1/embeddings", body(MAX_ARRAYS + 1))
    brackets = json.dumps({"model": "mistral:7b", "prompt": "[" * 1_000_000, "stream": False})
    assert sqlite_app.client.post("/v1/completions", content=brackets).status_code == 200
    flood = b'{"model":"nomic-embed-text","input":[' + b",".join([b"[]"] * 11_000_000) + b"]}"
    reply = sqlite_app.client.post("/v1/embeddings", content=flood)
    assert reply.status_code == 400
    assert "holds more than 100,000 arrays" in reply.json()["error"]["message"]
    refused, answered = sqlite_app.ledger.latest(SpanFilter(), 5)
    assert (refused.error_type, refused.request_model) == ("bad_request", "")
    assert answered.status == "ok"
    assert emulator.requests_to("/v1/embeddings") == []


def _list_fields(shape: Any, at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where each list a request's shape validates item by item is, in a body (a list of
    objects is looked into at its first item)."""
    import types
    import typing

    from pydantic import BaseModel

    found: list[tuple[str, ...]] = []
    for name, info in shape.model_fields.items():
        union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
        for member in typing.get_args(info.annotation) if union else (info.annotation,):
            annotated = typing.get_origin(member) is typing.Annotated
            kind = typing.get_args(member)[0] if annotated else member
            if typing.get_origin(kind) is list:
                found.append((*at, name))
                (item,) = typing.get_args(kind)
                if isinstance(item, type) and issubclass(item, BaseModel):
                    found += _list_fields(item, (*at, name, "0"))
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found += _list_fields(kind, (*at, name))
    return found


def _body_with(path: str, where: tuple[str, ...], items: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "llama3.1:8b"}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user"}]
    if path == "/v1/embeddings":
        body["input"] = "hi"
    here: Any = body
    for step, after in itertools.pairwise(where):
        if step == "0":
            here = here[0]
        else:
            here = here.setdefault(step, [{"role": "user"}] if after == "0" else {})
    here[where[-1]] = items
    return body


def _wrong_items_lists() -> list[tuple[str, tuple[str, ...]]]:
    from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES

    routes = {**OLLAMA_ROUTES, **OPENAI_ROUTES}
    return [(path, where) for path, shape in routes.items() for where in _list_fields(shape)]


@pytest.mark.parametrize(("path", "where"), _wrong_items_lists(), ids=str)
def test_a_list_of_wrong_items_costs_one_problem_however_long_it_is(
    path: str, where: tuple[str, ...]
) -> None:
    """A list is checked to its first wrong item, not each of them: 4 MB of ``[1,1,...]``
    as messages (2 million items) took 10 s and 2.9 GB to refuse, one problem per item
    (32 MB, the largest body, past the machine's memory). No object in it, so no bound on
    objects held it."""
    from pydantic import ValidationError

    from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES

    shape = {**OLLAMA_ROUTES, **OPENAI_ROUTES}[path]
    problems = []
    for length in (1, 1000):
        with pytest.raises(ValidationError) as refused:
            shape.model_validate(_body_with(path, where, [[]] * length))
        problems.append(refused.value.error_count())
    assert problems[1] == problems[0]


def test_bodies_that_each_hold_part_of_the_room_never_wait_on_each_other() -> None:
    """Room is taken as a body arrives: bodies that came in side by side (60 vision calls of
    5 MB, or 9 of 30 MB) filled it with a part of each, and then each waited for room only
    another could give back when its answer was done, which needed the rest of its body:
    every one stalled the 30 s and most were refused 503. When every body holding room waits
    for more, the last to wait is read to its end (past the room by less than one body)."""
    done: list[str] = []
    answer = asyncio.Event()
    high: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(6):  # a body of 6 parts of 10 bytes, sent in turn with the others
            await take(scope, 10)
            high.append(memory.held)
            await asyncio.sleep(0)
        done.append(scope["name"])
        await answer.wait()

    memory = BodyMemory(app, most=100, wait=3600)

    async def run() -> None:
        calls = [
            asyncio.ensure_future(memory({"type": "http", "name": name}, None, None))
            for name in ("a", "b")
        ]
        for _ in range(100):  # no clock runs: only turns of the loop
            await asyncio.sleep(0)
        assert len(done) == 1  # one body whole; the other waits for its room
        answer.set()
        await asyncio.gather(*calls)

    asyncio.run(run())
    assert len(done) == 2
    assert memory.held == 0
    assert max(high) <= 100 + 6 * 10


@settings(max_examples=15, deadline=None)
@given(pattern=st.lists(st.integers(2, 12), min_size=1, max_size=20), count=st.integers(2000, 4000))
def test_a_body_that_comes_in_small_pieces_holds_about_its_size_while_it_is_read(
    pattern: list[int], count: int
) -> None:
    """Each piece was kept as its own ``bytes`` until the body ended: 2-byte pieces (a caller
    sending a few bytes at a time, each read on its own) held 21 times the body's size, out
    of sight of the room (which counts bytes), for the minute a slow body may take."""
    import tracemalloc

    from starlette.requests import Request

    from ollama_meter.gateway import _memory
    from ollama_meter.gateway._memory import read_body

    sizes = list(itertools.islice(itertools.cycle(pattern), count))
    total = sum(sizes)
    held: list[int] = []

    def traced() -> int:
        """What this test's pieces and the reader hold: made by their lines, with this test on
        the stack. Not the whole process's memory, nor all that ``_memory`` holds: other
        threads of the test worker change those too (16 KB and 13 KB in CI runs: a gateway
        an earlier test started, reading its own bodies)."""
        mine = [tracemalloc.Filter(True, __file__, all_frames=True)]  # this thread's
        made_here = [tracemalloc.Filter(True, __file__), tracemalloc.Filter(True, _memory.__file__)]
        snapshot = tracemalloc.take_snapshot().filter_traces(mine).filter_traces(made_here)
        return sum(s.size for s in snapshot.statistics("filename"))

    async def read(measured: bool) -> bytes:
        sent = iter(enumerate(sizes))
        base = traced() if measured else 0

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0)  # each piece is waited for, as from a caller
            n, size = next(sent, (0, 0))
            if not size and measured:  # all in: what the reader holds is the body, and its parts
                held.append(traced() - base)
            if not size:
                return {"type": "http.request", "body": b"", "more_body": False}
            piece = bytes([65 + n % 26]) * size  # a new object, as uvicorn's receive makes
            return {"type": "http.request", "body": piece, "more_body": True}

        scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
        return await read_body(Request(scope, receive), 10 * total)

    # Read once unmeasured first: under coverage, the first time a line runs in a worker its
    # record is made, allocated at that line (12 to 14 KB over this test's and the reader's
    # lines in CI runs 162 and 165, for a 4,000-byte body).
    asyncio.run(read(measured=False))
    tracemalloc.start(4)  # deep enough to reach this test's coroutine from the reader's lines
    try:
        body = asyncio.run(read(measured=True))
    finally:
        tracemalloc.stop()
    assert body == b"".join(bytes([65 + n % 26]) * size for n, size in enumerate(sizes))
    assert held[0] < 2 * total + 4096, f"{held[0]:,} bytes held for a body of {total:,}"


@settings(max_examples=200, deadline=None)
@given(value=_JSON_VALUES, encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]))
def test_a_body_is_read_from_its_own_encoding_as_json_loads_reads_it(
    value: Any, encoding: str
) -> None:
    """The decoder is made once a thread, not once a body: each body is still read as its
    bytes' encoding says (UTF-8, with or without a BOM, -16, -32)."""
    from ollama_meter.gateway._json import read_json

    raw = json.dumps(value).encode(encoding)
    assert read_json(raw) == json.loads(raw)


def test_each_body_counts_its_own_objects_after_one_refused_for_its_count() -> None:
    """The count of objects belongs to the body: a body refused partway through its objects
    leaves nothing counted against the next one, read on the event loop or in a thread."""
    from ollama_meter.gateway._json import MAX_OBJECTS, NotJson, read_json

    def objects(count: int) -> bytes:
        return b"[" + b",".join([b"{}"] * count) + b"]"

    for _ in range(2):
        with pytest.raises(NotJson, match="more than 100,000 objects"):
            read_json(objects(MAX_OBJECTS + 1))
        assert len(read_json(objects(MAX_OBJECTS))) == MAX_OBJECTS
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sizes = pool.map(lambda _: len(read_json(objects(MAX_OBJECTS))), range(4))
        assert list(sizes) == [MAX_OBJECTS] * 4
