"""The Python API's lifecycle hooks: what a hook may do to a call, and what it cannot."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import pytest

from ollama_meter import AsyncMeteredClient, MeteredClient, SpanRecord
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._attribution import MAX_TAGS
from ollama_meter.pricing import PriceRule, from_micros
from ollama_meter.testing import OllamaEmulator
from tests.factories import quick_history, token_prices

HI = [{"role": "user", "content": "say hi to the team"}]
CLIENTS = {"sync": MeteredClient, "async": AsyncMeteredClient}


def called(client: Any, **arguments: Any) -> Any:
    """One chat through ``client``, sync or async: its answer."""
    if isinstance(client, AsyncMeteredClient):

        async def main() -> Any:
            async with client:
                return await client.chat(model="llama3.1:8b", messages=HI, **arguments)

        return asyncio.run(main())
    with client:
        return client.chat(model="llama3.1:8b", messages=HI, **arguments)


async def tag_it(span: SpanRecord) -> None:
    span.tags["seen"] = "yes"


class AsyncCallable:
    async def __call__(self, span: SpanRecord) -> None:
        span.tags["seen"] = "yes"


def tag_it_later(span: SpanRecord) -> Any:
    span.tags["seen"] = "yes"
    yield


async def tag_it_async_later(span: SpanRecord) -> Any:
    span.tags["seen"] = "yes"
    yield


class GeneratorCallable:
    def __call__(self, span: SpanRecord) -> Any:
        span.tags["seen"] = "yes"
        yield


@pytest.mark.parametrize("when", ["on_start", "on_end"])
@pytest.mark.parametrize("flavour", sorted(CLIENTS))
@pytest.mark.parametrize(
    "hook",
    [tag_it, AsyncCallable(), "tag_it", tag_it_later, tag_it_async_later, GeneratorCallable()],
    ids=["async", "ac", "str", "gen", "asyncgen", "gc"],
)
def test_a_hook_that_cannot_be_called_with_the_span_is_refused_when_the_client_is_made(
    sqlite_url: str, emulator: OllamaEmulator, when: str, flavour: str, hook: Any
) -> None:
    """An ``async def`` hook (natural beside ``AsyncMeteredClient``) was called, its coroutine
    never awaited: Python's RuntimeWarning, the tags it adds never kept, on every call; a hook
    that is not callable failed in the log at every call. Both are refused at once."""
    expected = (
        rf"^{when} is not callable, but {type(hook).__name__}[^\n]*$"
        if isinstance(hook, str)
        else rf"^{when} is an async function: hooks are called with the span[^\n]*$"
        if hook in (tag_it,) or isinstance(hook, AsyncCallable)
        else rf"^{when} is (a|an async) generator function \(it has a yield\): calling it "
        r"only makes a generator, so its body would never run[^\n]*$"
    )
    with pytest.raises(TypeError, match=expected):
        CLIENTS[flavour](emulator.url, db_url=sqlite_url, **{when: hook})
    assert emulator.requests == []


@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_a_hook_that_hands_back_an_awaitable_is_one_log_line_and_the_call_goes_on(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function that returns a coroutine (a lambda around an async one) cannot be told
    from the hook it is until it is called: its coroutine is closed, not left to warn."""

    def later(span: SpanRecord) -> Any:
        return tag_it(span)

    client = CLIENTS[flavour](emulator.url, db_url=sqlite_url, on_end=later)
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        reply = called(client)
    assert reply.meter is not None and reply.meter.status == "ok"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "on_end returned a coroutine" in warned[0], warned
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.tags) == ("ok", {})


@pytest.mark.parametrize("when", ["on_start", "on_end"])
def test_a_hook_keeps_no_more_tags_than_a_call_may_have(
    sqlite_url: str, emulator: OllamaEmulator, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call takes at most 64 tags (each is stored on its span and exported with it); a hook
    that added 100,000 had each of them stored on the span's row. The call's own come first."""

    def many(span: SpanRecord) -> None:
        for i in range(100_000):
            span.tags[f"k{i}"] = "v"

    own = {f"own{i}": "x" for i in range(10)}
    client = MeteredClient(emulator.url, db_url=sqlite_url, tags=own, **{when: many})
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        reply = called(client)
    assert reply.meter is not None and reply.meter.status == "ok"
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert span.tags == {**own, **{f"k{i}": "v" for i in range(MAX_TAGS - len(own))}}
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        f"{when} left 100,010 tags on the span; a span keeps {MAX_TAGS}" in line for line in warned
    ), warned


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text for this one")

    __repr__ = __str__


class Sly(str):
    """Text whose own ``str()`` raises and which says it is printable when it is not."""

    def __str__(self) -> str:
        raise ValueError("no text for this one")

    def isprintable(self) -> bool:
        return True


HOSTILE_TAGS: dict[Any, Any] = {
    "ok": "yes",
    "number": 5,
    7: "seven",
    "none": None,
    "nested": {"a": "b"},
    Unprintable(): "v",
    "object": Unprintable(),
    "line\nbreak": "v",
    "escape": "red\x1b[31m",
    "sly": Sly("bell\x07"),
    Sly("sly-key"): "v",
    "long": "x" * 257,
    "surrogate": "\ud800",
}


@pytest.mark.parametrize("when", ["on_start", "on_end"])
@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_a_hooks_tags_follow_a_calls_rules_and_never_cost_the_call_its_row(
    sqlite_url: str,
    emulator: OllamaEmulator,
    flavour: str,
    when: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook's tag whose ``str()`` raised cost the call its row (the error reached the caller
    of a call Ollama had answered), and one with a control character or a number was stored
    as no call's tag could be: a hook's tags follow the call's rules, the rest left out."""

    def hostile(span: SpanRecord) -> None:
        span.tags.update(HOSTILE_TAGS)

    client = CLIENTS[flavour](
        emulator.url, db_url=sqlite_url, tags={"job": "nightly"}, **{when: hostile}
    )
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        reply = called(client)
    assert reply.meter is not None and reply.meter.status == "ok"
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.id, span.status, span.tags) == (
        reply.meter.id,
        "ok",
        {"job": "nightly", "ok": "yes", "sly-key": "v"},
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [
        f"{when} set 11 tags a call could not carry, left out (e.g. tag 'number': keys and "
        "values are text, not int); set text tags, as a call's"
    ]


def streamed(client: Any) -> Any:
    """One streamed chat through ``client``, sync or async, read to its end: its last chunk."""
    if isinstance(client, AsyncMeteredClient):

        async def main() -> Any:
            async with client:
                chunks = await client.chat(model="llama3.1:8b", messages=HI, stream=True)
                return [chunk async for chunk in chunks][-1]

        return asyncio.run(main())
    with client:
        return list(client.chat(model="llama3.1:8b", messages=HI, stream=True))[-1]


class Boom:
    """A hook that raises what it is given."""

    def __init__(self, raised: BaseException) -> None:
        self.raised = raised

    def __call__(self, span: SpanRecord) -> None:
        raise self.raised


@pytest.mark.parametrize("raised", [ValueError("a bug"), GeneratorExit(), asyncio.CancelledError()])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_what_a_hook_raises_is_its_own_failure_said_by_its_name(
    sqlite_url: str,
    emulator: OllamaEmulator,
    flavour: str,
    stream: bool,
    raised: BaseException,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook runs in no generator and no task a cancellation reaches: a GeneratorExit or
    CancelledError it raises is its own. Raised on, GeneratorExit reached the caller and cut
    an async stream mid-close ("already running" logged by asyncio), CancelledError ended a
    task nobody cancelled; and a failing hook was named by an object's repr."""
    client = CLIENTS[flavour](emulator.url, db_url=sqlite_url, on_end=Boom(raised))
    with caplog.at_level(logging.WARNING):
        last = streamed(client) if stream else called(client)
    assert last.meter is not None and last.meter.status == "ok"
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.id, span.status, span.stream) == (last.meter.id, "ok", stream)
    said = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [
        ("ollama_meter.client", "on_end hook Boom raised; the call goes on, recorded as it ended")
    ]


class Collected:
    """A hook that keeps the spans it is handed, and says how many: falsy before the first."""

    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []

    def __call__(self, span: SpanRecord) -> None:
        self.spans.append(span)

    def __len__(self) -> int:
        return len(self.spans)


@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_a_hook_object_that_is_falsy_is_called_all_the_same(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str
) -> None:
    """The client took a hook that was falsy (here: empty) for none, and never called it."""
    collected = Collected()
    reply = called(CLIENTS[flavour](emulator.url, db_url=sqlite_url, on_end=collected))
    assert reply.meter is not None
    assert [span.id for span in collected.spans] == [reply.meter.id]


@pytest.mark.parametrize("made", [tag_it_later, tag_it_async_later], ids=["gen", "asyncgen"])
def test_a_hook_that_hands_back_a_generator_is_one_log_line_and_the_call_goes_on(
    sqlite_url: str, emulator: OllamaEmulator, made: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A function with a ``yield`` only makes a generator: the tags its body adds were never
    added, without a word. Refused when the client is made; handed back by a plain one, said."""

    def hands_back(span: SpanRecord) -> Any:
        return made(span)

    client = MeteredClient(emulator.url, db_url=sqlite_url, on_end=hands_back)
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        reply = called(client)
    assert reply.meter is not None and reply.meter.status == "ok"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "on_end returned a generator, which nothing iterates: the code in it did not run; "
        "make the hook a plain function without yield"
    ]
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.tags) == ("ok", {})


class Slow:
    """An on_start hook that takes ``seconds`` (sleeping), and says how long it slept."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.slept: list[int] = []

    def __call__(self, span: SpanRecord) -> None:
        started = time.perf_counter_ns()
        time.sleep(self.seconds)
        self.slept.append(time.perf_counter_ns() - started)


@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_the_time_an_on_start_hook_takes_is_the_callers_never_priced_as_ollamas(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str
) -> None:
    """Where Ollama does not say how long it was busy (``/api/embed``), the meter's clock
    stands in: it counted the on_start hook's time too, priced as GPU time (a hook that took
    a second cost a call at 1 USD a GPU-second 1 USD more). The call waits for its hook
    before it is sent: that is queue time, in its latency, and busy time plus queue time is
    the latency, as on every call the meter's clock times."""
    slow = Slow(0.05)
    client = CLIENTS[flavour](emulator.url, db_url=sqlite_url, on_start=slow)
    client.meter.ledger.add_price_rule(
        PriceRule(pattern="*", currency="USD", gpu_hour=Decimal(3600))  # 1 USD a second
    )
    if isinstance(client, AsyncMeteredClient):
        reply = asyncio.run(client.embed(model="nomic-embed-text", input="one text"))
    else:
        reply = client.embed(model="nomic-embed-text", input="one text")
    (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.id, span.duration_source) == (reply.meter.id, "measured")
    (slept,) = slow.slept
    assert span.queue_ns is not None and span.latency_ns is not None
    assert slept <= span.queue_ns <= span.latency_ns  # the caller's time, in the latency
    priced = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
    busy = priced + (span.load_duration_ns or 0)
    assert busy + span.queue_ns == span.latency_ns
    assert span.cost_compute == round(Decimal(priced) / 1000)  # a micro-dollar a microsecond
    assert reply.meter.cost_parts["compute"] == from_micros(span.cost_compute)


@pytest.mark.parametrize("flavour", sorted(CLIENTS))
def test_the_time_an_on_start_hook_takes_does_not_run_a_timed_calls_time_out(
    sqlite_url: str, emulator: OllamaEmulator, flavour: str
) -> None:
    """Under a hard budget that prices GPU time, a call is cut once it has run as long at
    Ollama as it was admitted on (about 2.3 s here): a hook that took longer ran that out
    before the call was sent, and its quick answer was cut."""
    slow = Slow(3.0)  # longer than the call was admitted on
    client = CLIENTS[flavour](department="sales", tenant="acme", db_url=sqlite_url, on_start=slow)
    ledger = client.meter.ledger
    ledger.add_price_rule(token_prices(gpu_hour=Decimal(3600)))
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**12, currency="USD")
    )
    ledger.record([quick_history()])
    reply = called(client, options={"num_predict": 64})
    assert reply.done and reply.meter is not None
    (span,) = ledger.latest(SpanFilter(), 5)[:1]
    assert (span.status, span.error_type) == ("ok", None)
    assert span.queue_ns is not None and span.queue_ns >= slow.slept[0]
