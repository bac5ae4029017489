"""Arguments read as the ``ollama`` client reads them, whatever their shape: an iterable it
walks itself (messages, a message's images, tools, images) is walked once, and read whole
each time it is sent; one it hands to its request model (an embedding's ``input``, a
generate's ``context``, ``stream``) is taken or refused as that model takes or refuses it."""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import ollama
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, InvalidRequest, MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator

PIXELS = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
HI = {"role": "user", "content": "say hi to the team"}
TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}

SHAPES: dict[str, Callable[[list[Any]], Iterable[Any]]] = {
    "list": list,
    "tuple": tuple,
    "generator": lambda items: (item for item in items),
    "iterator": iter,
    "deque": collections.deque,
    "dict keys": lambda items: _hashed(items, lambda kept: dict.fromkeys(kept).keys()),
    "set": lambda items: _hashed(items, set),
}
"""Iterables code for the ``ollama`` client may pass (each made anew for every client)."""


def _hashed(items: list[Any], made: Callable[[list[Any]], Iterable[Any]]) -> Iterable[Any]:
    """``items`` as a set or a dict's keys; a list where an item is a dict (unhashable)."""
    return made(items) if all(isinstance(item, str | int | bytes) for item in items) else items


def _arguments(operation: str, where: str, shape: str) -> dict[str, Any]:
    """A call's arguments with ``where`` in ``shape``; every other part a plain list."""
    made = SHAPES[shape]
    if operation == "embed":
        return {"model": "nomic-embed-text", "input": made(["one", "two"])}
    if operation == "generate":
        arguments: dict[str, Any] = {"model": "llama3.1:8b", "prompt": "hi"}
        if where == "context":
            arguments["context"] = made([3, 1, 2])
        else:
            arguments["images"] = made([PIXELS])
        return arguments
    message: Any = dict(HI)
    if where == "message images":
        message["images"] = made([PIXELS])
    elif where == "message pairs":
        message = made(list(HI.items()))
    arguments = {"model": "llama3.1:8b", "messages": [message]}
    if where == "messages":
        arguments["messages"] = made([message])
    elif where == "tools":
        arguments["tools"] = made([TOOL])
    return arguments


PLACES = [
    ("chat", "messages"),
    ("chat", "message images"),
    ("chat", "message pairs"),
    ("chat", "tools"),
    ("generate", "images"),
    ("generate", "context"),
    ("embed", "input"),
]


def _sent(emulator: OllamaEmulator, call: Callable[[], Any]) -> tuple[str, list[Any]]:
    """How ``call`` ended (answered, or the ``except`` that catches its refusal), and the
    bodies that reached Ollama."""
    emulator.reset()
    try:
        answer = call()
        if inspect.isgenerator(answer):
            list(answer)
        ended = "answered"
    except TypeError:  # what JSON cannot carry; ours is a TypeError there too
        ended = "TypeError"
    except ValueError:  # pydantic's ValidationError, and ours: what ``except ValueError`` takes
        ended = "ValueError"
    bodies = [r.body for r in emulator.requests if r.path.startswith(("/api/chat", "/api/gen"))]
    return ended, bodies + [r.body for r in emulator.requests if r.path == "/api/embed"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(PLACES), shape=st.sampled_from(sorted(SHAPES)))
def test_an_iterable_of_any_shape_is_taken_or_refused_and_sent_as_the_ollama_client_does(
    sqlite_url: str, emulator: OllamaEmulator, place: tuple[str, str], shape: str
) -> None:
    """A message's images given as an iterator reached Ollama as ``images: []``: the meter
    read them to count them, and the ``ollama`` client then found nothing left; a message of
    key-value pairs (``dict()`` reads it) was refused. An embedding's ``input`` or a generate's
    ``context`` as a set or a generator was made a list and sent: the ``ollama`` client refuses
    them (its request model takes a sequence)."""
    operation = place[0]
    real = ollama.Client(host=emulator.url)
    expected = _sent(emulator, lambda: getattr(real, operation)(**_arguments(*place, shape)))
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        before = metered.meter.ledger.count()
        got = _sent(emulator, lambda: getattr(metered, operation)(**_arguments(*place, shape)))
        spans = metered.meter.ledger.latest(SpanFilter(), 5)[
            : metered.meter.ledger.count() - before
        ]
    assert got == expected
    assert [(s.status, s.error_type) for s in spans] == [
        ("ok", None) if got[0] == "answered" else ("error", "bad_request")
    ]


def test_images_given_once_are_sent_again_when_the_call_is_retried(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """A retry sends what the first attempt sent: a message's images read once are kept."""
    emulator.inject(Fault.HTTP_503, times=1)
    message = {**HI, "images": iter([PIXELS])}
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        metered.chat(model="llama3.1:8b", messages=[message])
    first, second = (r.body for r in emulator.requests if r.path == "/api/chat")
    assert first == second and len(second["messages"][0]["images"]) == 1


STREAM_VALUES = st.one_of(
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from([0.0, 1.0, 0.5, float("nan")]),
    st.sampled_from(["no", "yes", "false", "True", "off", "on", "0", "1", "", "x", "nope"]),
    st.sampled_from([[], [1], {}, b"", b"1", ("a",)]),
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=STREAM_VALUES, operation=st.sampled_from(["chat", "generate"]))
def test_stream_is_taken_or_refused_and_sent_as_the_ollama_client_does(
    sqlite_url: str, emulator: OllamaEmulator, stream: Any, operation: str
) -> None:
    """``stream=`` is read by the ``ollama`` client's request model: ``"no"`` is sent as
    false (and answered, as that client answers a truthy value, as chunks), ``2`` or ``"x"``
    is refused. Ours took Python's truth of it: ``"no"`` was sent as a stream, ``2`` too."""
    arguments: dict[str, Any] = (
        {"messages": [HI]} if operation == "chat" else {"prompt": "say hi to the team"}
    )
    real = ollama.Client(host=emulator.url)
    shapes = []

    def call(client: Any) -> Any:
        answer = getattr(client, operation)(model="llama3.1:8b", stream=stream, **arguments)
        shapes.append(inspect.isgenerator(answer))
        return answer

    expected = _sent(emulator, lambda: call(real))
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        before = metered.meter.ledger.count()
        got = _sent(emulator, lambda: call(metered))
        spans = metered.meter.ledger.latest(SpanFilter(), 5)[
            : metered.meter.ledger.count() - before
        ]
    assert got == expected
    assert shapes[1:] == shapes[:1] or got[0] != "answered"
    (span,) = spans
    if got[0] == "answered":
        assert (span.status, span.stream) == ("ok", got[1][0]["stream"])
    else:
        assert (span.status, span.error_type) == ("error", "bad_request")


def test_a_stream_flag_no_bool_reads_as_is_said_as_the_callers_mistake(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        try:
            metered.chat(model="llama3.1:8b", messages=[HI], stream=2)  # type: ignore[arg-type]
        except InvalidRequest as refused:
            said = str(refused)
        else:
            raise AssertionError("stream=2 was taken")
    assert said == (
        "the request is malformed, so it was not sent to Ollama: stream must be True or "
        "False, not 2"
    )
    assert emulator.calls == []


def test_the_async_client_reads_stream_as_ollamas_async_client_does(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``"no"``: one answer, handed over as a stream of one chunk (an async generator, as
    ``ollama.AsyncClient`` hands it); ``2``: refused, as that client refuses it."""

    async def ended(client: Any, stream: Any) -> tuple[str, Any]:
        try:
            answer = await client.chat(model="llama3.1:8b", messages=[HI], stream=stream)
        except ValueError:
            return "ValueError", None
        chunks = [chunk async for chunk in answer]
        return type(answer).__name__, [chunk.done for chunk in chunks]

    async def both(stream: Any) -> list[tuple[str, Any]]:
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as metered:
            return [
                await ended(ollama.AsyncClient(host=emulator.url), stream),
                await ended(metered, stream),
            ]

    assert asyncio.run(both("no")) == [("async_generator", [True])] * 2
    assert asyncio.run(both(2)) == [("ValueError", None)] * 2
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        spans = metered.meter.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.stream) for s in spans] == [("error", False), ("ok", False)]
