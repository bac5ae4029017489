"""The ``ollama`` client's calls that run no model (``list``, ``pull``, ``create``...) on
``MeteredClient``: they were missing (AttributeError), so code for the ``ollama`` client that
lists or pulls a model before it chats did not run on ours. Each now answers, streams and
fails as ``ollama.Client``'s does, and writes no span (nothing ran to charge)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, ClientClosed, MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator

NOT_OURS = {
    "systemone": "a model call (/v1/systemone) ometer cannot meter yet: left out, not let "
    "through unmetered",
}

Step = Callable[[Any], Any]
STEPS: dict[str, Step] = {
    "list": lambda c: c.list(),
    "ps": lambda c: c.ps(),
    "show": lambda c: c.show("llama3.1:8b"),
    "show a model not there": lambda c: c.show("nosuch:1b"),
    "pull": lambda c: c.pull("qwen3:8b"),
    "pull, streamed": lambda c: c.pull("qwen3:8b", stream=True),
    "pull a model no registry has": lambda c: c.pull("nosuch:1b"),
    "pull a model no registry has, streamed": lambda c: c.pull("nosuch:1b", stream=True),
    "push": lambda c: c.push("llama3.1:8b", insecure=True),
    "push, streamed": lambda c: c.push("llama3.1:8b", stream=True),
    "create": lambda c: c.create(
        "mine:1",
        from_="llama3.1:8b",
        system="be brief",
        parameters=ollama.Options(temperature=0.5, stop=["end"]),
        messages=[
            ollama.Message(role="user", content="hi"),
            {"role": "assistant", "content": "yo"},
        ],
        license=["MIT", "BSD"],
    ),
    "create, streamed": lambda c: c.create("mine:2", from_="mistral:7b", stream=True),
    "create from nothing": lambda c: c.create("mine:3"),
    "copy": lambda c: c.copy("llama3.1:8b", "copied:1"),
    "copy a model not there": lambda c: c.copy("nosuch:1b", "copied:2"),
    "delete": lambda c: c.delete("mistral:7b"),
    "delete a model not there": lambda c: c.delete("nosuch:1b"),
}


def _said(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def outcome(step: Step, client: Any) -> tuple[Any, ...]:
    """What a step gave: its answer (every chunk of a stream), or what it raised."""
    try:
        answer = step(client)
        if inspect.isgenerator(answer):
            return ("streamed", [(type(a).__name__, _said(a)) for a in answer])
        return (type(answer).__name__, _said(answer))
    except Exception as exc:
        return (type(exc), str(exc), getattr(exc, "status_code", None))


async def aoutcome(step: Step, client: Any) -> tuple[Any, ...]:
    try:
        answer = await step(client)
        if hasattr(answer, "__anext__"):  # a stream: Ollama's async generator, or ours
            return ("streamed", [(type(a).__name__, _said(a)) async for a in answer])
        return (type(answer).__name__, _said(answer))
    except Exception as exc:
        return (type(exc), str(exc), getattr(exc, "status_code", None))


def sent(emulator: OllamaEmulator) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.body) for r in emulator.requests]


@pytest.mark.parametrize("ours", [MeteredClient, AsyncMeteredClient])
def test_every_call_of_the_installed_ollama_client_is_ours_too(ours: type) -> None:
    """Read from the installed client, so its next call is caught too."""
    theirs = ollama.Client if ours is MeteredClient else ollama.AsyncClient
    calls = [n for n, v in vars(theirs).items() if callable(v) and not n.startswith("_")]
    assert [n for n in calls if not hasattr(ours, n) and n not in NOT_OURS] == []
    for name in (n for n in calls if n not in NOT_OURS and n != "close"):
        expected = inspect.signature(getattr(theirs, name)).parameters
        got = inspect.signature(getattr(ours, name)).parameters
        assert {n: (p.kind, p.default) for n, p in got.items() if n in expected} == {
            n: (p.kind, p.default) for n, p in expected.items()
        }, name
        assert [n for n in got if n in expected] == list(expected), name  # positions too


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=6))
def test_calls_that_run_no_model_go_as_the_ollama_clients_do(
    sqlite_url: str, emulator: OllamaEmulator, steps: list[str]
) -> None:
    """The same answers, chunks, errors (``ResponseError`` with Ollama's status) and the same
    requests, in any order (a pull, a create or a delete changes what the next call finds)."""
    runs = []
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        for client in (ollama.Client(emulator.url), metered):
            emulator.reset()
            runs.append(([outcome(STEPS[s], client) for s in steps], sent(emulator)))
        assert metered.meter.ledger.latest(SpanFilter(), 5) == []  # nothing ran: no span
    assert runs[1] == runs[0]


def test_the_async_client_goes_as_ollamas_async_client_does(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    async def run(client: Any) -> Any:
        emulator.reset()
        return [await aoutcome(STEPS[s], client) for s in sorted(STEPS)], sent(emulator)

    async def main() -> list[Any]:
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as metered:
            return [await run(ollama.AsyncClient(emulator.url)), await run(metered)]

    expected, got = asyncio.run(main())
    assert got == expected
    # each loop its own connections: a second asyncio.run reuses none of the first's
    with MeteredClient(emulator.url, db_url=sqlite_url) as check:
        assert check.meter.ledger.latest(SpanFilter(), 5) == []


def test_a_blob_is_pushed_as_the_ollama_client_pushes_it(
    sqlite_url: str, emulator: OllamaEmulator, tmp_path: Any
) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        digest = metered.create_blob(model)
    assert digest == ollama.Client(emulator.url).create_blob(model)
    assert emulator.blobs == {digest: model.stat().st_size}


@pytest.mark.parametrize("name", ["list", "pull, streamed", "delete"])
def test_a_closed_client_makes_none_of_them(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    metered = MeteredClient(emulator.url, db_url=sqlite_url)
    metered.close()
    with pytest.raises(ClientClosed, match="is closed; make a new one"):
        STEPS[name](metered)
    assert sent(emulator) == []
