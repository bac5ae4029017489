"""Arguments the ``ollama`` client takes in more shapes than JSON: read as it sends them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import (
    AsyncMeteredClient,
    BudgetExceeded,
    InvalidRequest,
    MeteredClient,
    UpstreamBadRequest,
    UpstreamError,
)
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import Fault, OllamaEmulator
from tests._raw_http import answering as answering_server
from tests.factories import token_prices

HI = [{"role": "user", "content": "say hi to the team"}]

WORDS = st.lists(
    st.text(st.characters(codec="utf-8", categories=("L", "N", "P")), min_size=1, max_size=12),
    min_size=1,
    max_size=12,
).map(" ".join)

AS_TEXT: dict[str, Any] = {
    "chat content": lambda t: ("chat", {"messages": [{"role": "user", "content": t}]}),
    "generate prompt": lambda t: ("generate", {"prompt": t}),
    "generate system": lambda t: ("generate", {"prompt": "hi", "system": t}),
    "embed input": lambda t: ("embed", {"input": t}),
    "embed inputs": lambda t: ("embed", {"input": [t]}),
}
MODEL = {"chat": "llama3.1:8b", "generate": "llama3.1:8b", "embed": "nomic-embed-text"}


def called(client: MeteredClient, where: str, text: str | bytes) -> Any:
    operation, arguments = AS_TEXT[where](text)
    return getattr(client, operation)(model=MODEL[operation], **arguments)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=WORDS, where=st.sampled_from(sorted(AS_TEXT)))
def test_text_given_as_bytes_is_estimated_as_the_text_it_is_sent_as(
    sqlite_url: str, emulator: OllamaEmulator, text: str, where: str
) -> None:
    """The ``ollama`` client sends bytes given for a prompt, a message's content or an
    embedding's input as the text they hold; the meter read only ``str`` there, so such a
    prompt was estimated at no tokens when Ollama left its count out."""
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        estimated = []
        for given_as in (text, text.encode()):
            emulator.inject(Fault.OMIT_COUNTS)
            answer = called(client, where, given_as)
            assert answer.meter is not None
            estimated.append((answer.meter.input_tokens, answer.meter.token_source))
    assert estimated[1] == estimated[0]


@pytest.mark.parametrize("where", sorted(AS_TEXT))
def test_a_prompt_given_as_bytes_is_bounded_by_its_size_under_a_hard_budget(
    sqlite_url: str, emulator: OllamaEmulator, where: str
) -> None:
    """A hard budget bounded a bytes prompt as empty: a 1 MB embedding input given as bytes
    was admitted against a budget of 1.00 and charged 2.05 (past the limit), where the same
    text as ``str`` is refused before it reaches Ollama."""
    big = "word " * 200_000
    with MeteredClient(emulator.url, tenant="acme", department="sales", db_url=sqlite_url) as c:
        c.meter.ledger.add_price_rule(token_prices())
        c.meter.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="month", limit=10**6, currency="USD")
        )
        refusals = []
        for given_as in (big, big.encode()):
            with pytest.raises(BudgetExceeded) as refused:
                called(c, where, given_as)
            refusals.append(str(refused.value))
        spans = c.meter.ledger.latest(SpanFilter(), 5)
    assert refusals[1] == refusals[0]
    assert [s.status for s in spans] == ["rejected"] * 2
    operation = AS_TEXT[where]("")[0]
    assert emulator.requests_to(f"/api/{operation}") == []  # never sent


WRONG_OPTION = st.sampled_from(["ten", True, [8], {"n": 8}])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=WRONG_OPTION, stream=st.booleans(), run_async=st.booleans())
def test_an_option_of_the_wrong_type_is_the_callers_mistake_never_retried_nor_counted(
    sqlite_url: str, emulator: OllamaEmulator, value: Any, stream: bool, run_async: bool
) -> None:
    """Ollama refuses ``num_predict: "ten"`` with a 500 (``option "num_predict" must be of
    type integer``); it was read as the server failing: sent three times a call, and three
    such calls opened the model's circuit, so every later call in the process (or through
    the gateway) failed fast for a minute on a healthy model."""
    emulator.reset()
    bad = {"model": "llama3.1:8b", "messages": HI, "options": {"num_predict": value}}

    async def call_async(client: AsyncMeteredClient, arguments: dict[str, Any]) -> Any:
        answer = await client.chat(**arguments, stream=stream)
        return [part async for part in answer][-1] if stream else answer

    def call(arguments: dict[str, Any]) -> Any:
        if run_async:
            client = AsyncMeteredClient(emulator.url, db_url=sqlite_url)
            return asyncio.run(call_async(client, arguments))
        with MeteredClient(emulator.url, db_url=sqlite_url) as client:
            answer = client.chat(**arguments, stream=stream)
            return list(answer)[-1] if stream else answer

    for _ in range(4):  # past the model circuit's threshold
        with pytest.raises(UpstreamBadRequest, match=r"^Ollama refused the request \(HTTP 500\)"):
            call(bad)
    assert len(emulator.requests_to("/api/chat")) == 4  # each sent once
    good = call({"model": "llama3.1:8b", "messages": HI})
    assert good.meter is not None and good.meter.status == "ok"
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        spans = client.meter.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.error_type, s.http_status) for s in spans] == [("ok", None, 200)] + [
        ("error", "bad_request", 500)
    ] * 4


@pytest.fixture
def answering() -> Iterator[ThreadingHTTPServer]:
    with answering_server() as server:
        yield server


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    status=st.sampled_from([301, 302, 303, 307, 308]), stream=st.booleans(), run_async=st.booleans()
)
def test_a_redirect_is_said_where_it_points_never_followed(
    sqlite_url: str,
    emulator: OllamaEmulator,
    answering: ThreadingHTTPServer,
    status: int,
    stream: bool,
    run_async: bool,
) -> None:
    """The ``ollama`` client follows redirects: a 301 or 302 (an http-to-https rule) sent the
    chat on as a GET, and the call failed as ``Ollama refused the request (HTTP 405)``, the
    caller's request blamed; a 307 sent it to another server, recorded as this one's. The
    gateway never follows one; the Python API and ``ometer chat`` now say where it points."""
    emulator.reset()
    where = {"location": f"{emulator.url}{{path}}"}
    answering.answer = (status, where, b"")  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{answering.server_address[1]}"

    async def call_async() -> None:
        async with AsyncMeteredClient(url, db_url=sqlite_url) as client:
            answer = await client.chat(model="llama3.1:8b", messages=HI, stream=stream)
            if stream:
                async for _ in answer:  # type: ignore[union-attr]
                    pass

    with MeteredClient(url, db_url=sqlite_url) as client:

        def call() -> None:
            if run_async:
                asyncio.run(call_async())
                return
            answer = client.chat(model="llama3.1:8b", messages=HI, stream=stream)
            if stream:
                list(answer)  # type: ignore[arg-type]

        with pytest.raises(UpstreamError) as failed:
            call()
        (span, *_) = client.meter.ledger.latest(SpanFilter(), 1)
    assert str(failed.value) == (
        f"Ollama at {url} answered HTTP {status}, which is not an answer: it redirects to "
        f"'{emulator.url}/api/chat': set OLLAMA_HOST to the server it points to"
    )
    assert emulator.requests == []
    assert (span.status, span.http_status, span.upstream_host) == ("error", status, url)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model_size=st.integers(1, 100_000), body_size=st.integers(0, 1_000_000))
def test_a_long_model_name_or_error_body_is_said_in_a_line_of_bounded_length(
    sqlite_url: str,
    emulator: OllamaEmulator,
    answering: ThreadingHTTPServer,
    model_size: int,
    body_size: int,
) -> None:
    """A 10 KB model name came back three times in ``ModelNotFound`` (a 30 KB "line"), and
    an upstream's error body, however long, whole in the error."""
    model = "m" * model_size
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        with pytest.raises(UpstreamError) as missing:
            client.chat(model=model, messages=HI)
    detail = json.dumps({"error": "e" * body_size}).encode()
    answering.answer = (500, {"content-type": "application/json"}, detail)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{answering.server_address[1]}"
    with MeteredClient(url, db_url=sqlite_url, retries=0) as client:
        with pytest.raises(UpstreamError) as failed:
            client.chat(model=model, messages=HI)
    for said in (str(missing.value), str(failed.value)):
        assert len(said) < 1000 and "\n" not in said, said[:200]


def test_a_model_named_in_bytes_is_metered_under_the_name_sent(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """The ``ollama`` client sends ``model=b"llama3.1:8b"`` as the name it holds; the span's
    requested model said ``b'llama3.1:8b'``, a model reports and filters never name."""
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        client.meter.ledger.add_price_rule(token_prices("llama3.1:*"))
        reply = client.chat(model=b"llama3.1:8b", messages=HI)  # type: ignore[arg-type]
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert reply.meter is not None and not reply.meter.unpriced and reply.meter.cost > 0
    assert span.request_model == "llama3.1:8b"


@pytest.mark.parametrize(
    ("messages", "said"),
    [
        (
            "hi",
            "messages must be a list of messages, e.g. [{'role': 'user', 'content': 'hi'}], not str",
        ),
        (
            {"role": "user", "content": "hi"},
            "messages must be a list of messages, e.g. [{'role': 'user', 'content': 'hi'}], not dict",
        ),
        (["hi"], "message 1 must be a message such as {'role': 'user', 'content': 'hi'}, not str"),
        (
            [{"role": "user", "content": "a"}, 5],
            "message 2 must be a message such as {'role': 'user', 'content': 'hi'}, not int",
        ),
    ],
)
def test_messages_of_another_shape_are_said_in_the_callers_terms(
    sqlite_url: str, emulator: OllamaEmulator, messages: object, said: str
) -> None:
    """``chat(messages="hi")`` raised the ``ollama`` client's own words, "dictionary update
    sequence element #0 has length 1; 2 is required", which name neither the argument nor
    what it takes. It is refused, recorded and said as the gateway says it."""
    with pytest.raises(Exception) as official:  # whatever the ollama client raises
        ollama.Client(host=emulator.url).chat(model="llama3.1:8b", messages=messages)  # type: ignore[arg-type]
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        with pytest.raises(InvalidRequest) as refused:
            client.chat(model="llama3.1:8b", messages=messages)  # type: ignore[arg-type]
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert str(refused.value) == f"the request is malformed, so it was not sent to Ollama: {said}"
    # still caught as the ollama client's own refusal was
    assert isinstance(refused.value, TypeError) == isinstance(official.value, TypeError)
    assert (span.status, span.error_type, span.http_status) == ("error", "bad_request", 400)
