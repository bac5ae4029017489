"""Arguments of every type the ``ollama`` client takes reach Ollama as that client sends them:
``ollama.Message`` and ``ollama.Options`` objects, images as bytes, paths, base64 text or
``ollama.Image``, tools as Python functions, ``ollama.Tool`` or dicts, a Pydantic model's
schema as ``format``, ``think`` as a level."""

from __future__ import annotations

import asyncio
import base64
import inspect
from pathlib import Path
from typing import Any

import ollama
import pydantic
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator

PIXELS = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def add_days(date: str, days: int = 1) -> str:
    """Move a date forward.

    Args:
      date: the day to start from, as an ISO date
      days: how many days to move it forward
    """
    return date


class Answer(pydantic.BaseModel):
    city: str
    people: int


def _images(where: Path) -> st.SearchStrategy[list[Any]]:
    picture = where / "picture.png"
    picture.write_bytes(PIXELS)
    one = st.sampled_from(
        [
            PIXELS,
            picture,
            str(picture),
            base64.b64encode(PIXELS).decode(),
            ollama.Image(value=PIXELS),
            ollama.Image(value=picture),
        ]
    )
    return st.lists(one, min_size=1, max_size=2)


TOOLS = st.lists(
    st.sampled_from(
        [
            add_days,
            ollama.Tool(
                type="function",
                function=ollama.Tool.Function(
                    name="weather",
                    description="the weather in a city",
                    parameters=ollama.Tool.Function.Parameters(
                        type="object",
                        required=["city"],
                        properties={
                            "city": ollama.Tool.Function.Parameters.Property(
                                type="string", description="where"
                            )
                        },
                    ),
                ),
            ),
            {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
        ]
    ),
    max_size=3,
)
OPTIONS = st.one_of(
    st.none(),
    st.builds(
        ollama.Options,
        temperature=st.sampled_from([None, 0.0, 0.7]),
        num_predict=st.sampled_from([None, 5, 40]),
        stop=st.sampled_from([None, ["\n"], ["end", "stop"]]),
        seed=st.sampled_from([None, 42]),
    ),
    st.fixed_dictionaries({"temperature": st.sampled_from([0.2, 1]), "num_ctx": st.just(2048)}),
)
FORMATS = st.sampled_from([None, "json", Answer.model_json_schema()])
TEXT = st.text(min_size=1, max_size=30)


def _message(role: str, content: str, images: list[Any] | None) -> ollama.Message:
    """As a ``Message`` takes them: each image an ``ollama.Image``."""
    pictures = [i if isinstance(i, ollama.Image) else ollama.Image(value=i) for i in images or []]
    return ollama.Message(role=role, content=content, images=pictures or None)


@st.composite
def calls(draw: st.DrawFn, where: Path) -> tuple[str, dict[str, Any]]:
    operation = draw(st.sampled_from(["chat", "generate", "embed"]))
    if operation == "embed":
        given = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3))
        return operation, {"input": draw(given), "options": draw(OPTIONS), "truncate": True}
    images = draw(st.one_of(st.none(), _images(where)))
    common = {"options": draw(OPTIONS), "format": draw(FORMATS), "keep_alive": draw(
        st.sampled_from([None, "5m", 0, 1.5])
    )}  # fmt: skip
    if operation == "generate":
        return operation, {"prompt": draw(TEXT), "images": images, "system": "be brief", **common}
    first = {"role": "user", "content": draw(TEXT), "images": images}
    message = draw(st.sampled_from([dict, _message]))(**first)
    earlier = ollama.Message(
        role="assistant",
        content="",
        thinking=draw(st.sampled_from([None, "hmm"])),
        tool_calls=[
            ollama.Message.ToolCall(
                function=ollama.Message.ToolCall.Function(
                    name="add_days", arguments={"date": "2026-12-01", "days": 2}
                )
            )
        ],
    )
    messages = draw(st.sampled_from([[message], [earlier, message], ({"role": "system",
        "content": "s"}, message)]))  # fmt: skip
    tool = {"role": "tool", "content": "2026-12-03", "tool_name": "add_days"}
    messages = [*messages, *draw(st.sampled_from([[], [tool], [ollama.Message(**tool)]]))]
    if messages[-1]["role"] == "tool":
        messages.append({"role": "user", "content": "and then?"})
    return operation, {"messages": messages, "tools": draw(TOOLS) or None, **common}


def _drawn(data: st.DataObject, where: Path) -> tuple[str, str, dict[str, Any]]:
    """A call: its operation, a model that takes it, and its arguments (streamed or not)."""
    operation, arguments = data.draw(calls(where))
    if operation != "embed":
        arguments["stream"] = data.draw(st.booleans())
    return operation, "nomic-embed-text" if operation == "embed" else "llama3.1:8b", arguments


def _answers(answer: Any) -> Any:
    return answer if inspect.isgenerator(answer) else [answer]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_what_reaches_ollama_is_what_the_ollama_client_sends_for_any_argument_it_takes(
    sqlite_url: str, emulator: OllamaEmulator, tmp_path: Path, data: st.DataObject
) -> None:
    operation, arguments = data.draw(calls(tmp_path))
    model = "nomic-embed-text" if operation == "embed" else "llama3.1:8b"
    path = f"/api/{operation}"
    if operation != "embed":
        arguments["stream"] = data.draw(st.booleans())
    emulator.reset()
    list(_answers(getattr(ollama.Client(emulator.url), operation)(model=model, **arguments)))
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        answer = list(_answers(getattr(metered, operation)(model=model, **arguments)))[-1]
        (span, *_) = metered.meter.ledger.latest(SpanFilter(), 1)
    expected, got = (request.body for request in emulator.requests_to(path))
    assert got == expected
    assert answer.meter is not None and (span.status, span.id) == ("ok", answer.meter.id)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_async_client_sends_what_ollamas_async_client_sends(
    sqlite_url: str, emulator: OllamaEmulator, tmp_path: Path, data: st.DataObject
) -> None:
    operation, model, arguments = _drawn(data, tmp_path)

    async def called(client: Any) -> Any:
        answer = await getattr(client, operation)(model=model, **arguments)
        return (
            [a async for a in answer][-1]
            if inspect.isasyncgen(answer) or hasattr(answer, "__anext__")
            else answer
        )

    async def main() -> Any:
        await called(ollama.AsyncClient(emulator.url))
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as metered:
            return await called(metered)

    emulator.reset()
    answer = asyncio.run(main())
    expected, got = (request.body for request in emulator.requests_to(f"/api/{operation}"))
    assert got == expected
    assert answer.meter is not None and answer.meter.status == "ok"
