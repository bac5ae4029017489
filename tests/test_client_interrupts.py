"""Ctrl-C at the worst moment of a Python API call: as its span is written."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from typing import Any

import pytest
from sqlalchemy import event

from ollama_meter import AsyncMeteredClient, MeteredClient, SpanRecord
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.factories import token_prices

HI = [{"role": "user", "content": "say hi to the team"}]
EXPECTED = expected_reply("llama3.1:8b", HI)


def called(client: MeteredClient, stream: bool) -> None:
    answer = client.chat(model="llama3.1:8b", messages=HI, stream=stream)
    if stream:
        list(answer)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ctrl_c_as_the_span_is_committed_still_records_the_call(
    db_url: str, emulator: OllamaEmulator, stream: bool, request: pytest.FixtureRequest
) -> None:
    """Ctrl-C (a real SIGINT) landing in the commit of a call's span: the call had been
    answered, yet its span was rolled back with the commit and not written again. A REPL or
    a notebook, which lives on after Ctrl-C, had the call in no report and its budget short
    of it; only the journal held it open, for a later process to record as ``interrupted``
    (its prompt charged, not its answer). Now the span is written, then Ctrl-C is raised."""
    # Ctrl-C raises, as in a terminal's foreground job: a test run started as a background
    # job has SIGINT ignored, and all four cases failed there ("DID NOT RAISE").
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    armed = [False]

    def interrupt_at_commit(*_: Any) -> None:
        if armed[0]:
            armed[0] = False
            os.kill(os.getpid(), signal.SIGINT)  # handled in this thread, in the commit

    def arm(span: SpanRecord) -> None:  # called just before the span is written
        armed[0] = True

    with MeteredClient(
        emulator.url, tenant="acme", department="sales", db_url=db_url, on_end=arm
    ) as client:
        ledger = client.meter.ledger
        ledger.add_price_rule(token_prices())
        ledger.save_budget(
            Budget(tenant="acme", department="sales", period="month", limit=10**9, currency="USD")
        )
        event.listen(ledger.engine, "commit", interrupt_at_commit)
        with pytest.raises(KeyboardInterrupt):
            called(client, stream)
        assert not armed[0]  # it did land in a commit
        gate = client.meter.budgets
        assert gate is not None and all(not lease.in_flight for lease in gate._leases.values())
        spans = ledger.latest(SpanFilter(), 5)
        # Not left open in the journal, for a later process to record as interrupted.
        assert [ledger.journal.noted(s.id) for s in spans] == [False]
    assert [(s.status, s.output_tokens, s.token_source) for s in spans] == [
        ("ok", EXPECTED.output_tokens, "reported")
    ]


def _stopped_at(seconds: float) -> None:
    """Ctrl-C in this (the main) thread ``seconds`` from now, as a terminal sends it."""
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_ctrl_c_while_ollama_works_on_the_call_charges_its_prompt(
    sqlite_url: str, emulator: OllamaEmulator, stream: bool, request: pytest.FixtureRequest
) -> None:
    """Ctrl-C while Ollama evaluated a call it had whole (a whole answer not come yet, or a
    stream before its first chunk) charged nothing, ``reported``: Ollama's work under-charged,
    and said to be what it reported, although it reported nothing. Now its prompt is charged,
    estimated, as a stream stopped after its first chunk charges it (and a call a dead
    process left is charged when recovered)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with MeteredClient(emulator.url, db_url=sqlite_url) as client:
        client.meter.ledger.add_price_rule(token_prices())
        emulator.latency = 5.0  # the prompt being evaluated: no byte of an answer yet
        _stopped_at(0.5)
        with pytest.raises(KeyboardInterrupt):
            called(client, stream)
        emulator.hurry()
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
        # what a stream stopped after its first chunk is charged for the same prompt
        emulator.token_latency = 5.0
        _stopped_at(0.5)
        with pytest.raises(KeyboardInterrupt):
            for _ in client.chat(model="llama3.1:8b", messages=HI, stream=True):
                pass
        emulator.hurry()
        later, _ = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.output_tokens, span.token_source) == ("client_abort", 0, "estimated")
    assert span.input_tokens == later.input_tokens > 0
    assert span.cost_total == span.input_tokens * 1000
    assert span.eval_duration_ns is not None and span.eval_duration_ns > 0  # Ollama's busy time


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_async_call_cancelled_while_ollama_works_on_it_charges_its_prompt(
    sqlite_url: str, emulator: OllamaEmulator, stream: bool
) -> None:
    async def main() -> None:
        async with AsyncMeteredClient(emulator.url, db_url=sqlite_url) as client:

            async def call() -> None:
                answer = await client.chat(model="llama3.1:8b", messages=HI, stream=stream)
                if stream:
                    async for _ in answer:  # type: ignore[union-attr]
                        pass

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), 0.5)

    emulator.latency = 5.0
    asyncio.run(main())
    emulator.hurry()
    with MeteredClient(emulator.url, db_url=sqlite_url) as check:
        (span,) = check.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.output_tokens, span.token_source) == ("client_abort", 0, "estimated")
    assert span.input_tokens > 0


def test_ctrl_c_before_ollama_has_the_whole_request_charges_nothing(
    sqlite_url: str, request: pytest.FixtureRequest
) -> None:
    """A server that takes the connection but reads nothing: the request never reached it
    whole (a prompt larger than the sockets hold), so the call consumed nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with socket.create_server(("127.0.0.1", 0)) as deaf:
        url = f"http://127.0.0.1:{deaf.getsockname()[1]}"
        with MeteredClient(url, db_url=sqlite_url) as client:
            _stopped_at(1.0)
            with pytest.raises(KeyboardInterrupt):
                client.chat(
                    model="llama3.1:8b", messages=[{"role": "user", "content": "hi " * 4_000_000}]
                )
            (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.input_tokens, span.output_tokens) == ("client_abort", 0, 0)
