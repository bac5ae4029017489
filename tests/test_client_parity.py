"""Code written for the ``ollama`` client runs unchanged on ``MeteredClient``: the same
arguments, and the same exceptions caught by the same ``except`` clauses."""

from __future__ import annotations

import asyncio
import inspect
import pickle
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import (
    AsyncMeteredClient,
    BudgetExceeded,
    InvalidRequest,
    MeteredClient,
    UpstreamError,
)
from ollama_meter._text import one_line
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator, unreachable_url
from tests.factories import token_prices

HI = [{"role": "user", "content": "say hi to the team"}]

FAILURES: dict[str, tuple[Fault | None, str, bool, str]] = {
    # name: (fault armed, model, streamed, the span's status)
    "unknown model": (None, "nosuch:1b", False, "model_not_found"),
    "unknown model, streamed": (None, "nosuch:1b", True, "model_not_found"),
    "500": (Fault.HTTP_500, "llama3.1:8b", False, "upstream_5xx"),
    "500, streamed": (Fault.HTTP_500, "llama3.1:8b", True, "upstream_5xx"),
    "error inside a stream": (Fault.MIDSTREAM_ERROR, "llama3.1:8b", True, "stream_error"),
}


def _failure(client: Any, **arguments: Any) -> BaseException:
    try:
        answer = client.chat(**arguments)
        for _ in answer if not isinstance(answer, ollama.ChatResponse) else ():
            pass
    except Exception as exc:  # what the caller's own ``except`` sees
        return exc
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_ollamas_failure_is_caught_as_the_ollama_client_raises_it(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    """``except ollama.ResponseError as e: e.status_code`` is how code for the ``ollama``
    client handles a missing model (pull it) or a busy server; ``MeteredClient`` raised
    ometer's own ``UpstreamError`` alone, which that ``except`` let through."""
    fault, model, stream, status = FAILURES[name]
    real = ollama.Client(host=emulator.url)
    with MeteredClient(emulator.url, db_url=sqlite_url, retries=0) as metered:
        seen = []
        for client in (real, metered):
            if fault is not None:
                emulator.inject(fault)
            seen.append(_failure(client, model=model, messages=HI, stream=stream))
        (span,) = metered.meter.ledger.latest(SpanFilter(), 5)
    expected, got = seen
    assert isinstance(expected, ollama.ResponseError)
    assert isinstance(got, ollama.ResponseError) and isinstance(got, UpstreamError)
    assert (got.status_code, got.error) == (expected.status_code, str(got))
    assert str(got).startswith(("Ollama", "model", "the stream")) and "status code" not in str(got)
    assert (span.status, span.error_type) == ("error", status)
    # said by its own name in a traceback, and sent to another process as it is
    assert (
        f"{type(got).__module__}.{type(got).__qualname__}"
        == "ollama_meter.errors."
        + {
            "model_not_found": "ModelNotFound",
            "upstream_5xx": "UpstreamServerError",
            "stream_error": "StreamError",
        }[status]
    )
    copied = pickle.loads(pickle.dumps(got))
    assert (type(copied), copied.status_code, copied.error, str(copied)) == (
        type(got),
        got.status_code,
        got.error,
        str(got),
    )


def test_no_connection_is_a_connection_error_as_the_ollama_clients_is(sqlite_url: str) -> None:
    """The ``ollama`` client raises the built-in ``ConnectionError`` when nothing answers."""
    url = unreachable_url()
    with pytest.raises(ConnectionError):
        ollama.Client(host=url).chat(model="llama3.1:8b", messages=HI)
    with MeteredClient(url, db_url=sqlite_url, retries=0) as metered:
        with pytest.raises(ConnectionError) as raised:
            metered.chat(model="llama3.1:8b", messages=HI)
        (span,) = metered.meter.ledger.latest(SpanFilter(), 5)
    assert isinstance(raised.value, UpstreamError) and url in str(raised.value)
    assert (span.status, span.error_type) == ("error", "connection")


def test_the_async_client_raises_as_ollamas_async_client_does(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    async def main() -> list[BaseException]:
        raised = []
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url, retries=0) as client:
            for stream in (False, True):
                try:
                    answer = await client.chat(model="nosuch:1b", messages=HI, stream=stream)
                    async for _ in answer:  # type: ignore[union-attr]
                        pass
                except ollama.ResponseError as exc:
                    raised.append(exc)
        return raised

    assert [e.status_code for e in asyncio.run(main())] == [404, 404]


@pytest.mark.parametrize("operation", ["chat", "generate", "embed", "embeddings"])
@pytest.mark.parametrize("client", [MeteredClient, AsyncMeteredClient])
def test_every_argument_of_the_ollama_clients_calls_is_taken(
    operation: str, client: type[MeteredClient | AsyncMeteredClient]
) -> None:
    """``logprobs=``, ``top_logprobs=`` (chat, generate) and an image model's ``width=``,
    ``height=``, ``steps=`` (generate) were a TypeError: code for the installed ``ollama``
    client did not run on ours. Read from that client, so its next argument is caught too."""
    ours = inspect.signature(getattr(client, operation)).parameters
    theirs = inspect.signature(getattr(ollama.Client, operation)).parameters
    assert [name for name in theirs if name not in ours] == []
    for name, parameter in theirs.items():
        assert (name, ours[name].default) == (name, parameter.default)
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:  # model, messages...
            assert list(ours).index(name) == list(theirs).index(name)


SENT: dict[str, tuple[str, dict[str, Any]]] = {
    "logprobs": ("chat", {"messages": HI, "logprobs": True, "top_logprobs": 3}),
    "generate logprobs": ("generate", {"prompt": "hi", "logprobs": True, "top_logprobs": 0}),
    "image size": ("generate", {"prompt": "a cat", "width": 64, "height": 32, "steps": 4}),
    "a model loaded, no prompt": ("generate", {}),
    "everything": (
        "generate",
        {"prompt": "hi", "suffix": "end", "system": "s", "raw": False, "keep_alive": 1.5},
    ),
}


@pytest.mark.parametrize("name", sorted(SENT))
def test_what_reaches_ollama_is_what_the_ollama_client_sends(
    sqlite_url: str, emulator: OllamaEmulator, name: str
) -> None:
    """``generate(model=...)``, the ``ollama`` client's way to load a model, sent ``prompt: ""``."""
    operation, arguments = SENT[name]
    path = f"/api/{operation}"
    getattr(ollama.Client(host=emulator.url), operation)(model="llama3.1:8b", **arguments)
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        answer = getattr(metered, operation)(model="llama3.1:8b", **arguments)
        (span,) = metered.meter.ledger.latest(SpanFilter(), 5)
    expected, got = (request.body for request in emulator.requests_to(path))
    assert got == expected
    assert answer.meter is not None and (span.status, span.id) == ("ok", answer.meter.id)


def _nested(depth: int) -> list[Any]:
    deep: list[Any] = []
    for _ in range(depth):
        deep = [deep]
    return deep


TOO_DEEP = {
    "an option": {"options": {"stop": _nested(3000)}},
    "a format": {"format": {"type": "object", "enum": _nested(3000)}},
    "a tool's schema": {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"x": {"enum": _nested(3000)}}},
                },
            }
        ]
    },
}


@pytest.mark.parametrize("where", sorted(TOO_DEEP))
def test_arguments_too_deep_to_send_are_the_callers_mistake_not_ollamas(
    sqlite_url: str, emulator: OllamaEmulator, where: str
) -> None:
    """A value nested past what JSON encoding recurses through: the ``ollama`` client raises
    RecursionError before sending. The meter took it for Ollama's failure (``upstream_error``),
    tried it three times and counted it against the model's circuit."""
    arguments = {"model": "llama3.1:8b", "messages": HI, **TOO_DEEP[where]}
    with pytest.raises(RecursionError):
        ollama.Client(host=emulator.url).chat(**arguments)
    with MeteredClient(emulator.url, db_url=sqlite_url, breaker_failures=1) as metered:
        for _ in range(2):
            with pytest.raises(InvalidRequest) as refused:
                metered.chat(**arguments)
        answer = metered.chat(model="llama3.1:8b", messages=HI)  # no circuit opened
        spans = metered.meter.ledger.latest(SpanFilter(), 5)
    assert not isinstance(refused.value, ollama.ResponseError)
    assert str(refused.value).startswith("the request is malformed, so it was not sent to Ollama")
    assert answer.meter is not None and answer.meter.status == "ok"
    assert [(s.status, s.error_type, s.input_tokens, s.output_tokens) for s in spans[1:]] == [
        ("error", "bad_request", 0, 0)
    ] * 2
    assert len(emulator.requests_to("/api/chat")) == 1  # the good call; nothing tried again


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8),
    control=st.sampled_from(["\n", "\r", "\x1b[31m", "\x07", "\u202e", "\x9b2J"]),
)
def test_a_model_name_with_control_characters_is_said_on_one_line(
    sqlite_url: str, emulator: OllamaEmulator, name: str, control: str
) -> None:
    """Ollama's 404 repeats the name as given; the error said it raw in its ``ollama pull``
    hint and Ollama's own words: a name with a newline or an escape sequence broke the line
    an application logs it on, or recoloured the terminal it is read on."""
    model = f"x{control}{name}"
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        with pytest.raises(ollama.ResponseError) as raised:
            metered.chat(model=model, messages=HI)
        (span,) = metered.meter.ledger.latest(SpanFilter(), 1)
    said = str(raised.value)
    assert one_line(said) == said and raised.value.error == said
    assert said.startswith(f"model '{one_line(model)}' is not available on {emulator.url}")
    assert f"`ollama pull {one_line(model)}`" in said
    assert (span.status, span.error_type, span.input_tokens, span.output_tokens) == (
        "error",
        "model_not_found",
        0,
        0,
    )


def test_meter_is_read_by_key_as_every_field_of_an_ollama_answer_is(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The ``ollama`` client's answers are read by attribute or by key (``r["message"]``);
    ``r["meter"]`` was a KeyError and ``"meter" in r`` False, though ``r.meter`` was set."""
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:
        answers = [
            metered.chat(model="llama3.1:8b", messages=HI),
            metered.generate(model="llama3.1:8b", prompt="hi"),
            metered.embed(model="nomic-embed-text", input="hi"),
            metered.embeddings(model="nomic-embed-text", prompt="hi"),
            [*metered.chat(model="llama3.1:8b", messages=HI, stream=True)][-1],
        ]
        spans = metered.meter.ledger.latest(SpanFilter(), 10)
    expected = ollama.Client(host=emulator.url).chat(model="llama3.1:8b", messages=HI)
    for answer in answers:
        assert "meter" in answer and answer["meter"] is answer.meter is not None
        assert "meter" not in answer.model_dump() and "meter" not in answer.model_dump_json()
    assert answers[0].model_dump().keys() == expected.model_dump().keys()
    assert sorted(a["meter"].id for a in answers) == sorted(s.id for s in spans)


def test_no_answer_in_time_is_a_timeout_error(sqlite_url: str, emulator: OllamaEmulator) -> None:
    """The ``ollama`` client lets httpx's timeout through; ours is the built-in one."""
    with MeteredClient(emulator.url, db_url=sqlite_url, retries=0, upstream_timeout=0.3) as m:
        emulator.inject(Fault.HANG)
        with pytest.raises(TimeoutError) as raised:
            m.chat(model="llama3.1:8b", messages=HI)
        (span,) = m.meter.ledger.latest(SpanFilter(), 1)
    assert isinstance(raised.value, UpstreamError) and not isinstance(
        raised.value, ollama.ResponseError
    )
    assert str(raised.value) == (
        f"Ollama at {emulator.url} did not answer in time; "
        "raise OMETER_UPSTREAM_TIMEOUT or check the server's load"
    )
    assert (span.status, span.error_type) == ("error", "timeout")


@pytest.mark.parametrize("stream", [False, True])
def test_a_budgets_refusal_is_caught_as_the_gateways_429_is(
    sqlite_url: str, emulator: OllamaEmulator, stream: bool
) -> None:
    """Through the gateway an ``ollama`` client's code sees a hard budget's refusal as
    ``ResponseError`` 429; through ``MeteredClient`` the same code let it through."""
    with MeteredClient(emulator.url, tenant="acme", department="sales", db_url=sqlite_url) as m:
        m.meter.ledger.add_price_rule(token_prices())
        first = m.chat(model="llama3.1:8b", messages=HI)
        assert first.meter is not None
        m.meter.ledger.save_budget(
            Budget(
                tenant="acme",
                department="sales",
                period="month",
                limit=int(first.meter.cost * 1_000_000),
                currency="USD",
            )
        )
        assert m.meter.budgets is not None
        m.meter.budgets.reload_soon()
        with pytest.raises(ollama.ResponseError) as refused:
            for _ in m.chat(model="llama3.1:8b", messages=HI, stream=stream):  # type: ignore[union-attr]
                pass
        spans = m.meter.ledger.latest(SpanFilter(), 5)
    assert isinstance(refused.value, BudgetExceeded) and refused.value.retry_after > 0
    assert (refused.value.status_code, refused.value.error) == (429, str(refused.value))
    assert type(refused.value).__qualname__ == "BudgetExceeded"
    assert [(s.status, s.error_type, s.input_tokens, s.cost_total) for s in spans] == [
        ("rejected", "budget_exceeded", 0, 0),
        ("ok", None, first.meter.input_tokens, int(first.meter.cost * 1_000_000)),
    ]
    assert len(emulator.requests_to("/api/chat")) == 1


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(read=st.integers(0, 3), thrown=st.sampled_from([ValueError, KeyError, GeneratorExit]))
def test_an_exception_thrown_into_an_async_stream_ends_it_as_ollamas_does(
    sqlite_url: str, emulator: OllamaEmulator, read: int, thrown: type[BaseException]
) -> None:
    """``ollama.AsyncClient`` streams are async generators: ``athrow`` and ``asend`` work on
    them. ometer's stream had neither (AttributeError: '_Chunks' object has no attribute
    'athrow'). Thrown into it, an exception now ends the stream as it ends Ollama's, raised
    to the caller; a call that had started is one ``client_abort`` span."""

    async def ended(client: Any) -> tuple[str, list[str]]:
        stream = await client.chat(model="llama3.1:8b", messages=HI, stream=True)
        seen = [(await stream.asend(None))["message"]["content"] for _ in range(read)]
        with pytest.raises(thrown):
            await stream.athrow(thrown("thrown"))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return type(stream).__name__, seen

    ollamas = asyncio.run(ended(ollama.AsyncClient(host=emulator.url)))[1]
    client = AsyncMeteredClient(host=emulator.url, db_url=sqlite_url)
    before = client.meter.ledger.count()
    assert asyncio.run(ended(client))[1] == ollamas
    spans = client.meter.ledger.latest(SpanFilter(), 10)[: client.meter.ledger.count() - before]
    assert [(s.status, s.error_type) for s in spans] == (
        [("client_abort", "client_abort")] if read else []
    )


@pytest.mark.parametrize("fault", [Fault.DROP, Fault.STALL, Fault.HANG], ids=str)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_what_httpx_raised_to_the_ollama_client_is_caught_as_it_was(
    sqlite_url: str, emulator: OllamaEmulator, fault: Fault, stream: bool
) -> None:
    """The ``ollama`` client lets httpx's errors through: ``httpx.ReadTimeout`` for an answer
    that does not come in time, ``httpx.RemoteProtocolError`` for one cut off. Code written for
    it (``except httpx.TimeoutException``, a retry on ``httpx.TransportError``) let ours
    through: a ``TimeoutError``, a ``ConnectionError``, a ``StreamError``, and no httpx error."""
    import httpx

    real = ollama.Client(host=emulator.url, timeout=0.5)
    with MeteredClient(
        emulator.url, db_url=sqlite_url, retries=0, upstream_timeout=0.5, breaker_failures=100
    ) as metered:
        seen = []
        for client in (real, metered):
            emulator.clear_faults()
            emulator.inject(fault, after_tokens=3)
            seen.append(_failure(client, model="llama3.1:8b", messages=HI, stream=stream))
        spans = metered.meter.ledger.latest(SpanFilter(), 1)
    expected, got = seen
    assert isinstance(expected, httpx.TransportError)
    assert isinstance(got, type(expected)) and isinstance(got, UpstreamError)
    assert got.request.url == expected.request.url
    assert [s.status for s in spans] == ["error"]
    # what it was besides, as before: caught by the handlers written for it
    assert isinstance(got, TimeoutError if fault is not Fault.DROP else UpstreamError)
    assert pickle.loads(pickle.dumps(got)).__class__ is type(got)
