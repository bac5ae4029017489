"""A process killed (``kill -9``, the OOM killer) while an ``on_end`` hook runs: Ollama had
answered the whole call, and its span, counted and priced, waited on the hook to be written.

Only a real process shows it, so each case is a process of its own, killed as it stands in
the hook (a slow webhook, a hung one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ollama_meter import MeteredClient, SpanRecord
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.testing import OllamaEmulator, expected_reply
from tests.factories import token_prices

HI = [{"role": "user", "content": "say hi to the team, at length"}]

IN_A_HOOK = """
import sys, threading
from ollama_meter import MeteredClient

host, url, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
HI = [{"role": "user", "content": "say hi to the team, at length"}]

def slow(span):
    print(span.id, flush=True)
    threading.Event().wait()  # a webhook that never answers

client = MeteredClient(host, db_url=url, tenant="acme", department="sales", **{sys.argv[4]: slow})
answer = client.chat(model="llama3.1:8b", messages=HI, stream=stream)
if stream:
    list(answer)
"""


def _killed_in(
    hook: str, stream: str, url: str, emulator: OllamaEmulator
) -> tuple[str, list[SpanRecord]]:
    """A process that calls once, killed as it stands in its ``hook``: the id of the call's
    span, and the spans the next process finds (recovering what the killed one left)."""
    open_ledger(url).add_price_rule(token_prices())
    child = subprocess.Popen(
        [sys.executable, "-c", IN_A_HOOK, emulator.url, url, stream, hook],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    span_id = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    with MeteredClient(emulator.url, db_url=url) as reader:
        return span_id, reader.meter.ledger.latest(SpanFilter(), 5)


@pytest.mark.parametrize("stream", ["whole", "stream"])
def test_a_call_answered_whole_is_recorded_whole_when_its_process_dies_in_a_hook(
    sqlite_url: str, emulator: OllamaEmulator, stream: str
) -> None:
    """It was recorded by the next process as ``interrupted``: its prompt estimated and none
    of its answer (8 tokens for 7, and none of 40, here), as a call cut off before any answer is. Now the
    span is noted whole before the hooks see it, and recorded as it ended."""
    span_id, spans = _killed_in("on_end", stream, sqlite_url, emulator)
    expected = expected_reply("llama3.1:8b", HI)
    assert [(s.id, s.status, s.input_tokens, s.output_tokens, s.token_source) for s in spans] == [
        (span_id, "ok", expected.prompt_tokens, expected.output_tokens, "reported")
    ]
    assert spans[0].cost_total > 0


@pytest.mark.parametrize("stream", ["whole", "stream"])
def test_a_call_whose_process_dies_in_its_on_start_hook_is_charged_nothing(
    sqlite_url: str, emulator: OllamaEmulator, stream: str
) -> None:
    """The call waits for its ``on_start`` hook before it is sent (queue time, as a gateway's
    call waits for a slot); killed there, it was recorded as ``interrupted`` and charged its
    prompt, though Ollama never had it. A gateway's call killed in its queue is charged
    nothing, and so is this one now."""
    _, spans = _killed_in("on_start", stream, sqlite_url, emulator)
    assert (spans, emulator.requests_to("/api/chat")) == ([], [])
