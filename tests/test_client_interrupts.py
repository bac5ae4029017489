"""Ctrl-C at the worst moment of a Python API call: as its span is written."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from sqlalchemy import event

from ollama_meter import MeteredClient, SpanRecord
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
