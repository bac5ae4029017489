"""The Python API against the emulator: the ollama client's objects, plus ``meter``."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from datetime import datetime
from decimal import Decimal
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ollama_meter
from ollama_meter import (
    AsyncMeteredClient,
    BudgetExceeded,
    InvalidRequest,
    MeteredClient,
    SpanRecord,
    UpstreamBadRequest,
    ValidationError,
)
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._request import facts_of
from ollama_meter.pricing import from_micros
from ollama_meter.testing import (
    DEFAULT_MODELS,
    THINKING_MODEL,
    Fault,
    OllamaEmulator,
    expected_embedding,
    expected_reply,
)
from tests.factories import quick_history, token_prices

HI = [{"role": "user", "content": "say hi to the team"}]
EXPECTED = expected_reply("llama3.1:8b", HI)


@pytest.fixture
def client(db_url: str, emulator: OllamaEmulator):  # type: ignore[no-untyped-def]
    with MeteredClient(department="sales", tenant="acme", db_url=db_url) as metered:
        metered.meter.ledger.add_price_rule(token_prices())
        yield metered


def cost_of(prompt: int, output: int) -> Decimal:
    return Decimal(prompt * 1000 + output * 2000) / 1_000_000


def test_chat_returns_the_ollama_object_plus_meter(
    client: MeteredClient, emulator: OllamaEmulator
) -> None:
    reply = client.chat(model="llama3.1:8b", messages=HI)
    plain = ollama.Client(host=emulator.url).chat(model="llama3.1:8b", messages=HI)
    assert isinstance(reply, ollama.ChatResponse)
    assert reply.message == plain.message and reply.message.content == EXPECTED.content
    assert (reply.prompt_eval_count, reply.eval_count, reply.done_reason) == (
        plain.prompt_eval_count,
        plain.eval_count,
        "stop",
    )
    assert "meter" not in reply.model_dump()
    meter = reply.meter
    assert meter is not None
    assert (meter.input_tokens, meter.output_tokens, meter.token_source) == (
        EXPECTED.prompt_tokens,
        EXPECTED.output_tokens,
        "reported",
    )
    assert meter.cost == cost_of(EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    assert meter.cost_parts["tokens"] == meter.cost and meter.currency == "USD"
    assert meter.durations_ns["eval"] == reply.eval_duration
    assert meter.duration_source == "reported"
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.id, span.trace_id, span.source, span.tenant, span.department) == (
        meter.span_id,
        meter.trace_id,
        "sdk",
        "acme",
        "sales",
    )


def test_streaming_chat_puts_meter_on_the_last_chunk(client: MeteredClient) -> None:
    chunks = list(
        client.chat(model="llama3.1:8b", messages=HI, stream=True, department="support", user="bob")
    )
    assert "".join(c.message.content or "" for c in chunks) == EXPECTED.content
    assert all(getattr(c, "meter", None) is None for c in chunks[:-1])
    last = chunks[-1]
    assert (
        last.done and last.meter is not None and last.meter.output_tokens == EXPECTED.output_tokens
    )
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.department, span.user, span.stream) == ("support", "bob", True)
    assert span.ttft_ns is not None


def test_generate_and_embed(client: MeteredClient) -> None:
    generated = client.generate(model="mistral:7b", prompt="write a haiku about disks")
    assert isinstance(generated, ollama.GenerateResponse) and generated.meter is not None
    expected = expected_reply("mistral:7b", prompt="write a haiku about disks")
    assert generated.response == expected.content
    parts = list(
        client.generate(model="mistral:7b", prompt="write a haiku about disks", stream=True)
    )
    assert "".join(p.response for p in parts) == expected.content and parts[-1].meter is not None
    embedded = client.embed(model="nomic-embed-text", input=["first text", "second"])
    assert isinstance(embedded, ollama.EmbedResponse)
    assert embedded.embeddings[0] == pytest.approx(
        expected_embedding("nomic-embed-text", "first text")
    )
    assert embedded.meter is not None and embedded.meter.output_tokens == 0
    assert embedded.meter.token_source == "reported" and embedded.meter.input_tokens == 3
    operations = [s.operation for s in client.meter.ledger.latest(SpanFilter(), 10)]
    assert operations == ["embed", "generate", "generate"]


def test_budget_refusal_is_a_typed_exception(client: MeteredClient) -> None:
    first = client.chat(model="llama3.1:8b", messages=HI)
    assert first.meter is not None
    spent = int(first.meter.cost * 1_000_000)
    client.meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=spent, currency="USD")
    )
    assert client.meter.budgets is not None
    client.meter.budgets.reload_soon()  # see the new budget at once
    with pytest.raises(BudgetExceeded) as refused:
        client.chat(model="llama3.1:8b", messages=HI)
    assert refused.value.exit_code == 3 and refused.value.retry_after > 0


NOT_TEXT = st.one_of(st.lists(st.integers(), min_size=1, max_size=2), st.just({"a": 1}))
MALFORMED = st.one_of(
    NOT_TEXT.map(lambda v: ("chat", {"messages": [{"role": "user", "content": v}]})),
    NOT_TEXT.map(lambda v: ("chat", {"messages": HI, "model": v})),
    st.sampled_from(["hi", 5]).map(lambda v: ("chat", {"messages": v})),
    st.just(("generate", {"prompt": {"a": 1}})),
    st.sampled_from([5, {"a": 1}]).map(lambda v: ("embed", {"input": v})),
    st.sampled_from(["fast", 3]).map(lambda v: ("chat", {"messages": HI, "options": v})),
    st.sampled_from(["fast", 3]).map(lambda v: ("generate", {"prompt": "hi", "options": v})),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=MALFORMED, stream=st.booleans(), run_async=st.booleans())
def test_a_malformed_call_is_the_callers_mistake_never_sent_and_one_bad_request_span(
    sqlite_url: str,
    emulator: OllamaEmulator,
    call: tuple[str, dict[str, Any]],
    stream: bool,
    run_async: bool,
) -> None:
    """Arguments the ollama client refuses to send: a ValidationError, never an upstream failure.

    The span says ``bad_request`` on one line, nothing reaches Ollama, and no circuit
    counts it (the next good call goes through).
    """
    operation, arguments = call
    arguments = {"model": "llama3.1:8b", **arguments}
    if operation != "embed":
        arguments["stream"] = stream
    emulator.reset()
    with MeteredClient(emulator.url, department="sales", db_url=sqlite_url) as metered:

        def call_it() -> None:
            answer = getattr(metered, operation)(**arguments)
            if arguments.get("stream"):
                list(answer)

        if run_async:

            async def go() -> None:
                client = AsyncMeteredClient(emulator.url, department="sales", db_url=sqlite_url)
                answer = await getattr(client, operation)(**arguments)
                if arguments.get("stream"):
                    async for _ in answer:
                        pass

            with pytest.raises(ValidationError) as refused:
                asyncio.run(go())
        else:
            with pytest.raises(ValidationError) as refused:
                call_it()
        assert isinstance(refused.value, InvalidRequest), refused.value
        assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
        (span, *_) = metered.meter.ledger.latest(SpanFilter(), 1)
        assert (span.status, span.error_type) == ("error", "bad_request")
        assert span.upstream_host == ""  # never sent: no server's call
        assert emulator.requests_to(f"/api/{operation}") == []
        for _ in range(3):  # more than the breaker's threshold: none of them counts
            with pytest.raises(InvalidRequest):
                call_it()
        good = {"model": "llama3.1:8b", "prompt": "hi"} if operation == "generate" else {}
        reply = (
            metered.chat(model="llama3.1:8b", messages=HI) if not good else metered.generate(**good)
        )
        assert reply.meter is not None and reply.meter.status == "ok"


def test_hooks_read_the_call_add_tags_and_cannot_break_it(
    db_url: str, emulator: OllamaEmulator
) -> None:
    seen: list[str] = []

    def on_start(span: SpanRecord) -> None:
        seen.append(span.request_model)

    def on_end(span: SpanRecord) -> None:
        span.tags["reviewed"] = "yes"
        span.attributes["app.feature"] = "summary"
        raise RuntimeError("a bug in the hook")

    with MeteredClient(
        db_url=db_url, on_start=on_start, on_end=on_end, tags={"job": "nightly"}
    ) as metered:
        reply = metered.chat(model="llama3.1:8b", messages=HI)
        assert reply.meter is not None
        (span,) = metered.meter.ledger.latest(SpanFilter(), 5)
    assert seen == ["llama3.1:8b"]
    assert span.tags == {"job": "nightly", "reviewed": "yes"}


def test_async_client(db_url: str, emulator: OllamaEmulator) -> None:
    async def main() -> tuple[Any, list[Any], Any]:
        client = AsyncMeteredClient(department="research", db_url=db_url)
        reply = await client.chat(model="qwen2.5:7b", messages=HI)
        stream = await client.chat(model="qwen2.5:7b", messages=HI, stream=True)
        chunks = [chunk async for chunk in stream]
        embedded = await client.embed(model="nomic-embed-text", input="one text")
        return reply, chunks, embedded

    reply, chunks, embedded = asyncio.run(main())
    expected = expected_reply("qwen2.5:7b", HI)
    assert isinstance(reply, ollama.ChatResponse) and reply.message.content == expected.content
    assert reply.meter is not None and reply.meter.output_tokens == expected.output_tokens
    assert "".join(c.message.content or "" for c in chunks) == expected.content
    assert chunks[-1].meter is not None and embedded.meter is not None


def test_public_surface_is_pinned() -> None:
    assert sorted(ollama_meter.__all__) == sorted(
        [
            "AsyncMeteredClient",
            "Attribution",
            "BudgetError",
            "BudgetExceeded",
            "CircuitOpen",
            "ClientClosed",
            "ConfigError",
            "InvalidRequest",
            "LedgerError",
            "MeterInfo",
            "MeteredChatResponse",
            "MeteredClient",
            "MeteredEmbedResponse",
            "MeteredEmbeddingsResponse",
            "MeteredGenerateResponse",
            "ModelNotFound",
            "OmeterError",
            "PricingError",
            "RateLimited",
            "Settings",
            "SpanRecord",
            "StreamError",
            "UpstreamBadRequest",
            "UpstreamConnectionError",
            "UpstreamError",
            "UpstreamServerError",
            "UpstreamTimeout",
            "ValidationError",
            "__version__",
            "configure_logging",
            "load_settings",
        ]
    )
    for name in ollama_meter.__all__:
        assert hasattr(ollama_meter, name), name


def test_an_answer_the_ollama_client_cannot_read_is_one_line_and_not_the_callers_fault(
    db_url: str,
) -> None:
    """A server in Ollama's place (a proxy, an old build) answers an embedding without
    ``embeddings``, which the ollama client needs: an upstream error, not the caller's."""
    from tests._raw_http import RawServer

    body = b'{"model":"llama3.1:8b","prompt_eval_count":1}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
    server = RawServer(lambda: head + b"content-length: %d\r\n\r\n%s" % (len(body), body))
    try:
        with MeteredClient(server.url, department="sales", tenant="acme", db_url=db_url) as client:
            with pytest.raises(ollama_meter.UpstreamError) as failed:
                client.embed(model="llama3.1:8b", input=["one"])
            (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    finally:
        server.close()
    assert not isinstance(failed.value, ValidationError)
    assert str(failed.value).endswith(
        "does not read as Ollama's API has it: EmbedResponse.embeddings: Field required"
    )
    assert (span.status, span.error_type) == ("error", "stream_error")


def test_a_task_cancelled_while_its_call_opens_still_closes_the_call(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """The open runs in a thread a cancellation cannot stop: the call it opened is closed."""
    opening = threading.Event()
    ended: list[str] = []

    def slow_start(span: SpanRecord) -> None:
        opening.set()
        time.sleep(0.2)  # a hook that takes its time: the cancellation lands in the open

    async def main() -> AsyncMeteredClient:
        client = AsyncMeteredClient(
            db_url=db_url, on_start=slow_start, on_end=lambda span: ended.append(span.status)
        )

        async def call(stream: bool) -> None:
            answer = await client.chat(model="llama3.1:8b", messages=HI, stream=stream)
            if stream:
                async for _ in answer:  # type: ignore[union-attr]
                    pass

        for stream in (False, True):
            opening.clear()
            task = asyncio.ensure_future(call(stream))
            while not opening.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return client

    client = asyncio.run(main())
    assert ended == ["client_abort", "client_abort"]
    spans = client.meter.ledger.latest(SpanFilter(), 5)
    assert [(s.status, s.stream) for s in spans] == [
        ("client_abort", True),
        ("client_abort", False),
    ]


def test_the_async_client_closes_as_ollamas_does(db_url: str, emulator: OllamaEmulator) -> None:
    """``async with`` and ``await close()``, as ``ollama.AsyncClient`` has them."""

    async def main() -> tuple[Any, bool]:
        async with AsyncMeteredClient(db_url=db_url) as client:
            reply = await client.chat(model="llama3.1:8b", messages=HI)
            pool = client.meter.upstream.async_client._client  # type: ignore[attr-defined]
        return reply, pool.is_closed

    reply, closed = asyncio.run(main())
    assert reply.meter is not None and reply.meter.status == "ok"
    assert closed


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_after_close_is_the_callers_mistake_and_not_recorded(
    db_url: str, emulator: OllamaEmulator, stream: bool
) -> None:
    with MeteredClient(db_url=db_url) as client:
        pass
    with pytest.raises(ValidationError, match=r"^this MeteredClient is closed[^\n]*$"):
        client.chat(model="llama3.1:8b", messages=HI, stream=stream)  # a stream too, at once

    async def main() -> None:
        async with AsyncMeteredClient(db_url=db_url) as later:
            pass
        with pytest.raises(ValidationError, match=r"^this AsyncMeteredClient is closed"):
            await later.generate(model="llama3.1:8b", prompt="hi")

    asyncio.run(main())
    assert client.meter.ledger.latest(SpanFilter(), 5) == []


HOSTILE = st.sampled_from(
    [None, "", "x" * 300, -5, 10**30, 1.5, "7", b"\x00", object(), datetime(2020, 1, 1), {}]
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(sorted(set(SpanRecord.__slots__) - {"tags", "attributes"})), HOSTILE
        ),
        min_size=1,
        max_size=3,
    ),
    when=st.sampled_from(["on_start", "on_end"]),
)
def test_a_hook_that_writes_nonsense_into_the_span_changes_only_its_tags(
    client: MeteredClient,
    db_url: str,
    changes: list[tuple[str, object]],
    when: str,
) -> None:
    """Hooks may add tags and attributes; nothing else they write reaches the call or the ledger."""

    def meddle(span: SpanRecord) -> None:
        span.tags["hook"] = when
        for name, value in changes:
            setattr(span, name, value)

    hooks: dict[str, Any] = {when: meddle}
    with MeteredClient(department="sales", tenant="acme", db_url=db_url, **hooks) as metered:
        reply = metered.chat(model="llama3.1:8b", messages=HI, user="bob")
    assert reply.meter is not None
    (span,) = [s for s in client.meter.ledger.latest(SpanFilter(), 100) if s.id == reply.meter.id]
    assert (span.status, span.tenant, span.department, span.user, span.tags) == (
        "ok",
        "acme",
        "sales",
        "bob",
        {"hook": when},
    )
    assert (
        reply.meter.cost
        == from_micros(span.cost_total)
        == cost_of(EXPECTED.prompt_tokens, EXPECTED.output_tokens)
    )


@pytest.mark.parametrize("when", ["on_start", "on_end"])
def test_ctrl_c_in_a_slow_hook_still_writes_the_span_and_settles_the_budget(
    client: MeteredClient, db_url: str, when: str
) -> None:
    """Ctrl-C lands in whatever runs: here a hook. It reaches the caller once the span is written."""
    client.meter.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
    )

    def interrupted(span: SpanRecord) -> None:
        raise KeyboardInterrupt

    hooks: dict[str, Any] = {when: interrupted}
    with MeteredClient(department="sales", tenant="acme", db_url=db_url, **hooks) as metered:
        for stream in (False, True):
            with pytest.raises(KeyboardInterrupt):
                list(metered.chat(model="llama3.1:8b", messages=HI, stream=stream))  # type: ignore[call-overload]
        gate = metered.meter.budgets
        assert gate is not None
        assert all(not lease.in_flight for lease in gate._leases.values())
    spans = client.meter.ledger.latest(SpanFilter(), 5)
    expected = "client_abort" if when == "on_start" else "ok"
    assert [(s.status, s.stream) for s in spans] == [(expected, True), (expected, False)]


def test_an_async_client_serves_one_event_loop_after_another(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """``asyncio.run`` per call (scripts, tests): connections of a closed loop are not reused."""
    client = AsyncMeteredClient(db_url=db_url)

    async def one() -> str:
        reply = await client.chat(model="llama3.1:8b", messages=HI)
        return reply.meter.status if reply.meter is not None else "none"

    assert [asyncio.run(one()) for _ in range(3)] == ["ok"] * 3
    assert [s.status for s in client.meter.ledger.latest(SpanFilter(), 5)] == ["ok"] * 3


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_waiting_to_retry_a_failed_attempt_does_not_run_a_timed_calls_time_out(
    sqlite_url: str, emulator: OllamaEmulator, stream: bool, flavour: str
) -> None:
    """Under a hard budget that prices GPU time, a call is cut once it has run as long at
    Ollama as it was admitted on (about 2.3 s here: room for a loaded machine's slow answer):
    a 503 and a longer wait before the retry ran that out, and the quick answer that followed
    was cut. The wait is not Ollama's."""
    backoff = {"retry_backoff": 3.0}  # longer than the call was admitted on
    metered_client = MeteredClient if flavour == "sync" else AsyncMeteredClient
    client: Any = metered_client(department="sales", tenant="acme", db_url=sqlite_url, **backoff)
    ledger = client.meter.ledger
    ledger.add_price_rule(token_prices(gpu_hour=Decimal(3600)))
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    ledger.record([quick_history()])
    emulator.inject(Fault.HTTP_503, times=1)
    request = {"model": "llama3.1:8b", "messages": HI, "options": {"num_predict": 64}}

    async def in_a_loop() -> list[Any]:
        async with client:
            answer = await client.chat(**request, stream=stream)
            return [part async for part in answer] if stream else [answer]

    if flavour == "sync":
        with client:
            answer = client.chat(**request, stream=stream)
            parts = list(answer) if stream else [answer]
    else:
        parts = asyncio.run(in_a_loop())
    assert parts[-1].done and parts[-1].meter is not None
    assert len(emulator.requests_to("/api/chat")) == 2
    (span,) = ledger.latest(SpanFilter(), 5)[:1]
    assert (span.status, span.error_type) == ("ok", None)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_stream_made_before_close_and_read_after_is_the_callers_mistake_and_not_recorded(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str
) -> None:
    """A stream is a generator: its call starts when it is first read. Read after ``close()``,
    it was an ``unexpected failure calling Ollama`` (the closed httpx client's words) with an
    error span, though Ollama was never asked."""
    if flavour == "sync":
        client = MeteredClient(emulator.url, db_url=sqlite_url)
        stream = client.chat(model="llama3.1:8b", messages=HI, stream=True)
        client.close()
        with pytest.raises(ValidationError, match=r"^this MeteredClient is closed[^\n]*$"):
            list(stream)
        ledger = client.meter.ledger
    else:

        async def main() -> AsyncMeteredClient:
            later = AsyncMeteredClient(emulator.url, db_url=sqlite_url)
            answer = await later.chat(model="llama3.1:8b", messages=HI, stream=True)
            await later.close()
            with pytest.raises(ValidationError, match=r"^this AsyncMeteredClient is closed"):
                async for _ in answer:  # type: ignore[union-attr]
                    pass
            return later

        ledger = asyncio.run(main()).meter.ledger
    assert ledger.latest(SpanFilter(), 5) == []
    assert emulator.requests_to("/api/chat") == []


def test_a_client_closed_mid_stream_ends_the_call_as_an_abort_not_an_upstream_failure(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Closing a client while another part of the program still reads its stream (shutdown)
    is the caller's doing: it was a ``stream_error`` that the model's circuit counted, so
    three such closes made every client in the process fail fast on a healthy model."""
    emulator.token_latency = 0.3  # the rest of the answer is not sent yet when the client closes
    try:
        for _ in range(3):  # the model circuit's threshold
            client = MeteredClient(emulator.url, db_url=sqlite_url)
            stream = client.chat(model="llama3.1:8b", messages=HI, stream=True)
            next(stream), next(stream)
            client.close()
            with pytest.raises(ValidationError, match=r"^the client was closed while[^\n]*$"):
                list(stream)
    finally:
        emulator.token_latency = 0.0
    spans = client.meter.ledger.latest(SpanFilter(), 10)
    # Two chunks handed over, the third read ahead (the last is held until the span is written):
    # three arrived, and are charged.
    assert [(s.status, s.error_type, s.output_tokens) for s in spans] == [
        ("client_abort", "client_abort", 3)
    ] * 3
    with MeteredClient(emulator.url, db_url=sqlite_url) as fresh:
        reply = fresh.chat(model="llama3.1:8b", messages=HI)
    assert reply.meter is not None and reply.meter.status == "ok"


CONVERSATION = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant"]),
            "content": st.text(min_size=1, max_size=40),
        }
    ),
    min_size=1,
    max_size=4,
)
SHAPES: dict[str, Any] = {
    "tuple": tuple,
    "generator": lambda messages: (m for m in messages),
    "ollama.Message": lambda messages: [ollama.Message(**m) for m in messages],
}


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=CONVERSATION, shape=st.sampled_from(sorted(SHAPES)), stream=st.booleans())
def test_messages_in_any_shape_the_ollama_client_takes_are_sent_and_metered_as_a_list(
    sqlite_url: str,
    emulator: OllamaEmulator,
    messages: list[dict[str, str]],
    shape: str,
    stream: bool,
) -> None:
    """A tuple, a generator or ``ollama.Message`` objects, as ``ollama.Client.chat`` takes them.

    The meter read only a list of dicts: the others were an empty prompt (estimated at 0
    tokens when Ollama leaves its counts out, and bounded as empty under a hard budget), and
    a generator was used up by the first attempt, so a retry after a 503 sent no messages."""
    with MeteredClient(emulator.url, department="sales", db_url=sqlite_url) as client:
        estimates = []
        for given in (messages, SHAPES[shape](messages)):
            emulator.reset()
            emulator.inject(Fault.HTTP_503)
            emulator.inject(Fault.OMIT_COUNTS)
            answer = client.chat(model="llama3.1:8b", messages=given, stream=stream)
            last = list(answer)[-1] if stream else answer
            assert last.meter is not None and last.meter.token_source == "estimated"
            estimates.append(last.meter.input_tokens)
            sent = [r.body["messages"] for r in emulator.requests_to("/api/chat")]
            assert sent == [messages, messages]
        assert estimates[1] == estimates[0] > 0


@pytest.mark.parametrize("model", [None, "", "  ", 0, False, [], b""])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_call_without_a_model_is_refused_as_every_malformed_call_is(
    sqlite_url: str, emulator: OllamaEmulator, model: str | None, flavour: str
) -> None:
    """``ollama.Client`` refuses ``model=None`` as it refuses ``model=5``: the metered client
    raised InvalidRequest with a ``bad_request`` span for the one, and for the other a plain
    ValidationError naming the CLI's ``-m``, with no span (the gateway records both)."""
    client: Any = (MeteredClient if flavour == "sync" else AsyncMeteredClient)(
        emulator.url, department="sales", db_url=sqlite_url
    )

    async def call_async(stream: bool) -> None:
        await client.chat(model=model, messages=HI, stream=stream)

    def call(stream: bool) -> None:  # a stream is refused at once too, as ollama's is
        if flavour == "sync":
            client.chat(model=model, messages=HI, stream=stream)
        else:
            asyncio.run(call_async(stream))

    for stream in (False, True):
        with pytest.raises(InvalidRequest) as refused:
            call(stream)
        assert str(refused.value) == (
            "the request is malformed, so it was not sent to Ollama: no model given; "
            "name one, e.g. model='llama3.1:8b'"
        )
    spans = client.meter.ledger.latest(SpanFilter(), 5)
    assert [
        (s.status, s.error_type, s.department, s.request_model, s.upstream_host) for s in spans
    ] == [("error", "bad_request", "sales", "", "")] * 2
    assert emulator.requests == []


def test_an_async_call_fails_when_awaited_as_ollamas_does(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``ollama.AsyncClient``'s calls raise when awaited; a bad name given to a metered call
    raised as it was made, before ``gather`` could collect it, leaving the calls made before
    it never awaited."""

    async def main() -> list[Any]:
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as client:
            calls = [client.chat(model="llama3.1:8b", messages=HI, user=u) for u in ("bob", "b b")]
            return await asyncio.gather(*calls, return_exceptions=True)

    good, bad = asyncio.run(main())
    assert good.meter is not None and good.meter.status == "ok"
    assert isinstance(bad, ValidationError) and str(bad).startswith("user name 'b b' has")


@pytest.mark.parametrize("tags", [[("job", "nightly")], "job=nightly"])
def test_tags_that_are_not_a_mapping_are_one_clear_line(
    sqlite_url: str, emulator: OllamaEmulator, tags: Any
) -> None:
    """They were ``TypeError: 'list' object is not a mapping``, naming neither tags nor a fix."""
    expected = r"^tags are a mapping of text to text, e.g. \{'job': 'nightly'\}, not (list|str)$"
    with pytest.raises(ValidationError, match=expected):
        MeteredClient(emulator.url, db_url=sqlite_url, tags=tags)
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        with pytest.raises(ValidationError, match=expected):
            client.chat(model="llama3.1:8b", messages=HI, tags=tags)
        assert client.meter.ledger.latest(SpanFilter(), 5) == []
    assert emulator.requests == []


TYPE_ERRORS = st.sampled_from(
    [
        ("chat", {"messages": 5}),
        ("chat", {"messages": [5]}),
        ("chat", {"messages": HI, "tools": 5}),
        ("generate", {"prompt": "hi", "images": 5}),
    ]
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=st.one_of(MALFORMED, TYPE_ERRORS), stream=st.booleans())
def test_a_malformed_call_is_caught_by_what_catches_the_ollama_clients_refusal(
    sqlite_url: str, emulator: OllamaEmulator, call: tuple[str, dict[str, Any]], stream: bool
) -> None:
    """A drop-in: ``except ValueError`` (pydantic's ValidationError is one) or ``except
    TypeError`` around ``ollama.Client`` calls still catches the metered client's refusal."""
    operation, arguments = call
    arguments = {"model": "llama3.1:8b", **arguments}
    if operation != "embed":
        arguments["stream"] = stream
    with pytest.raises(Exception) as official:  # whatever the ollama client raises
        getattr(ollama.Client(host=emulator.url), operation)(**arguments)
    kind = TypeError if isinstance(official.value, TypeError) else ValueError
    assert isinstance(official.value, kind)
    with MeteredClient(emulator.url, db_url=sqlite_url) as metered:

        def call_it() -> None:
            answer = getattr(metered, operation)(**arguments)
            if arguments.get("stream"):
                list(answer)

        with pytest.raises(InvalidRequest) as refused:
            call_it()
    assert isinstance(refused.value, kind), type(refused.value).__mro__


def test_an_argument_given_as_none_is_left_out_only_where_the_ollama_client_leaves_it_out(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """``embed(input=None)``: the ollama client refuses it (``input`` is text or texts); the
    metered client left it out, so the client's default ``''`` was sent and Ollama's empty
    answer was charged as an upstream failure."""
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        with pytest.raises(InvalidRequest, match=r"EmbedRequest\.input"):
            client.embed(model="nomic-embed-text", input=None)  # type: ignore[arg-type]
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.error_type) == ("error", "bad_request")
    assert emulator.requests == []


def add_days(date: str, days: int = 1) -> str:
    """Move a date forward: a tool the model may call.

    Args:
      date: the day to start from, as an ISO date such as 2026-12-01
      days: how many days to move it forward; negative to move it back
    """
    return date


def test_a_python_function_given_as_a_tool_is_counted_as_the_schema_sent_for_it(
    emulator: OllamaEmulator,
) -> None:
    """``ollama.Client`` takes Python functions as tools and sends each as a JSON schema
    built from its signature and docstring; the meter counted ``str(function)`` (``<function
    add_days at 0x...>``), so a hard budget bounded the call below the prompt it sent."""
    ollama.Client(host=emulator.url).chat(model="llama3.1:8b", messages=HI, tools=[add_days])
    (sent,) = emulator.requests_to("/api/chat")
    as_sent = facts_of("chat", {"messages": HI, "tools": sent.body["tools"]})
    as_given = facts_of("chat", {"messages": HI, "tools": [add_days]})
    assert as_given.prompt_bytes >= as_sent.prompt_bytes


@pytest.mark.parametrize(
    "tags", [{"k" * 10_000: "v"}, {"k" * 10_000: 5}, {"job": "v" * 10_000}, {"job\n" * 2_000: "v"}]
)
def test_a_refused_tag_is_named_in_a_short_line(
    sqlite_url: str, emulator: OllamaEmulator, tags: dict[str, Any]
) -> None:
    """A 10 KB tag key was echoed whole into the error: a 10 KB "one-line" message."""
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        with pytest.raises(ValidationError) as refused:
            client.chat(model="llama3.1:8b", messages=HI, tags=tags)
    message = str(refused.value)
    assert message.startswith("tag ") and len(message) < 300 and "\n" not in message


@pytest.mark.parametrize("flavour", [MeteredClient, AsyncMeteredClient])
@pytest.mark.parametrize("argument", ["departmnet", "timout", "header", "verfy"])
def test_an_argument_the_client_does_not_take_is_refused_not_ignored(
    sqlite_url: str, emulator: OllamaEmulator, flavour: type, argument: str
) -> None:
    """Unknown arguments went into the settings, which ignore what they do not know: a
    misspelt ``departmnet="sales"`` charged every call to ``unassigned``, and ``timeout=`` or
    ``headers=`` (``ollama.Client`` passes them to httpx) did nothing, silently. Those are
    taken now (``test_client_http.py``); misspelt, they are still refused."""
    name = flavour.__name__
    with pytest.raises(
        TypeError, match=rf"^{name}\(\) got an unexpected keyword argument '{argument}'"
    ):
        flavour(emulator.url, db_url=sqlite_url, **{argument: "sales"})
    client = flavour(emulator.url, db_url=sqlite_url, upstream_timeout=30, retry_backoff=0.01)
    assert client.meter.ledger.latest(SpanFilter(), 1) == []


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cap=st.integers(1, 60), form=st.sampled_from(["int", "float", "fraction"]))
def test_a_reply_cap_given_as_a_number_ollama_reads_is_the_cap_a_hard_budget_sends(
    sqlite_url: str, emulator: OllamaEmulator, cap: int, form: str
) -> None:
    """Ollama reads ``num_predict`` 8.0 (or 8.5) as 8, as JSON numbers come to it; under a
    hard budget the meter read only an int, found no cap, and sent its own (4,096): the
    caller's 8-token answer came back 38 tokens long, and was charged so."""
    given: float = {"int": cap, "float": float(cap), "fraction": cap + 0.5}[form]
    with MeteredClient(
        emulator.url, department="sales", tenant="acme", db_url=sqlite_url
    ) as client:
        client.meter.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
        )
        emulator.reset()
        reply = client.chat(model="llama3.1:8b", messages=HI, options={"num_predict": given})
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.body["options"]["num_predict"] == cap
    assert reply.meter is not None and reply.meter.output_tokens == min(cap, EXPECTED.output_tokens)


def test_event_loops_running_at_once_in_threads_each_keep_their_connections(
    sqlite_url: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One AsyncMeteredClient, an event loop per thread (``asyncio.run`` in workers): the
    transport kept one ``ollama.AsyncClient``, for the last loop that called, so loops
    taking turns made a new client (and connection) for nearly every call, and a loop
    could be handed the client another had just made for itself."""
    made: list[weakref.ref[ollama.AsyncClient]] = []
    original = ollama.AsyncClient.__init__

    def counted(self: ollama.AsyncClient, *args: Any, **kwargs: Any) -> None:
        made.append(weakref.ref(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(ollama.AsyncClient, "__init__", counted)
    client = AsyncMeteredClient(emulator.url, db_url=sqlite_url)
    turns = threading.Barrier(4)
    statuses: list[str] = []

    def worker() -> None:
        async def calls() -> None:
            for _ in range(3):
                turns.wait()  # every loop calls in every round
                reply = await client.chat(model="llama3.1:8b", messages=HI)
                statuses.append(reply.meter.status if reply.meter is not None else "none")

        asyncio.run(calls())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == ["ok"] * 12
    assert len(made) == 4
    # Their loops are closed: the clients (and their connections) are let go at the next call.
    assert asyncio.run(client.chat(model="llama3.1:8b", messages=HI)).meter is not None
    gc.collect()
    assert [ref() is None for ref in made] == [True] * 4 + [False]


def test_a_format_refused_inside_a_thinking_stream_is_the_callers_mistake_and_opens_no_circuit(
    sqlite_url: str,
) -> None:
    """Ollama reads a thinking model's ``format`` only once its thinking is streamed: the
    refusal of a schema it cannot read comes inside the 200. Through the ``ollama`` client too,
    it is the caller's mistake (``UpstreamBadRequest``), and the model's circuit stays shut."""
    bad = {"model": THINKING_MODEL.name, "messages": HI, "format": {"type": "thing"}}
    with (
        OllamaEmulator(models=[*DEFAULT_MODELS, THINKING_MODEL]) as emu,
        MeteredClient(emu.url, department="sales", db_url=sqlite_url) as metered,
    ):
        for _ in range(4):  # past the breaker's threshold of 3
            with pytest.raises(UpstreamBadRequest, match="invalid JSON schema in format"):
                list(metered.chat(**bad, stream=True))
        reply = metered.chat(model=THINKING_MODEL.name, messages=HI)
        assert reply.meter is not None and reply.meter.status == "ok"
        spans = metered.meter.ledger.latest(SpanFilter(), 10)
        assert [(s.status, s.error_type) for s in spans] == [("ok", None)] + [
            ("error", "bad_request")
        ] * 4
