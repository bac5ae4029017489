"""The pass of a two-pass chat Ollama does not report is charged the time the gateway saw it run.

A thinking model's chat with a ``format`` runs twice: the first pass thinks (its thinking
streams to the client), is cancelled as it starts to answer, and the second runs with the
thinking in its prompt. Ollama reports the second pass only, so a price by the GPU-hour
charged none of the first pass's generation. The gateway saw it: the thinking streamed from
its first piece to its last, as Ollama's own ``eval_duration`` is the wall time of generation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import ollama
import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.records import round_half_even
from ollama_meter.testing import DEFAULT_MODELS, THINKING_MODEL, OllamaEmulator
from tests.gateway.conftest import Gateway

THINKER = replace(THINKING_MODEL, reply_tokens=3_000)  # thinks 1,501 words, then answers
HI = [{"role": "user", "content": "hi"}]
GPU = PriceRule(pattern="*", currency="USD", gpu_hour=Decimal(3600))
"""1 USD a second of busy time: a micro-unit per 1,000 ns."""
_departments = itertools.count()


@pytest.fixture
def thinking(serve_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[Any]:
    with OllamaEmulator(models=[*DEFAULT_MODELS, THINKER]) as emu:
        gw = serve_on(emu.url, sqlite_url)
        gw.ledger.add_price_rule(GPU)
        yield gw, emu


def chat(gw: Gateway, limit: int | None, *, fmt: bool = True) -> tuple[list[Any], Any]:
    department = f"t{next(_departments)}"
    if limit is not None:
        gw.ledger.save_budget(Budget("acme", department, "day", limit, "USD"))
        assert gw.meter.budgets is not None
        gw.meter.budgets.reload_soon()
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    client = ollama.Client(host=gw.url, headers=who)
    shape = {"format": "json"} if fmt else {}
    parts = list(
        client.chat(THINKER.name, HI, options={"num_predict": 2_000}, stream=True, **shape)
    )
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(department=department), 5)
    return parts, span


@pytest.mark.parametrize("limit", [None, 10**12], ids=["no budget", "hard budget"])
def test_the_unreported_first_pass_is_charged_the_thinking_time_the_gateway_saw(
    thinking: tuple[Gateway, OllamaEmulator], limit: int | None
) -> None:
    gw, _ = thinking
    parts, span = chat(gw, limit)
    last = parts[-1]
    assert (last.prompt_eval_count, last.eval_count) == (1_502, 2_000)  # the second pass
    reported = (last.prompt_eval_duration, last.eval_duration)
    # Partly the meter's clock now: "measured" (as on /v1), so perf's speed leaves it out
    assert (span.status, span.duration_source) == ("ok", "measured")
    assert span.prompt_eval_duration_ns == reported[0]
    # The first pass generated 1,501 thinking tokens, streamed over time the gateway timed:
    # charged as generation, beside the second pass's own.
    assert span.eval_duration_ns > reported[1]
    busy = span.prompt_eval_duration_ns + span.eval_duration_ns + (span.load_duration_ns or 0)
    assert busy <= span.latency_ns  # within the call, as Ollama's own figures are
    charged = span.prompt_eval_duration_ns + span.eval_duration_ns  # load apart (not priced)
    assert span.cost_compute == round_half_even(charged, 1000)  # a micro-unit a 1,000 ns
    assert span.cost_total == span.cost_compute


def test_a_chat_of_one_pass_is_charged_as_reported(
    thinking: tuple[Gateway, OllamaEmulator],
) -> None:
    # No format: one pass, its thinking and answer in its own count and time.
    gw, _ = thinking
    parts, span = chat(gw, None, fmt=False)
    last = parts[-1]
    assert last.eval_count == 2_000
    assert (span.prompt_eval_duration_ns, span.eval_duration_ns, span.duration_source) == (
        last.prompt_eval_duration,
        last.eval_duration,
        "reported",
    )


def test_on_v1_the_meters_clock_already_times_both_passes_and_nothing_is_added(
    thinking: tuple[Gateway, OllamaEmulator],
) -> None:
    """Ollama's ``/v1`` routes report no durations: the meter's clock stands in for the whole
    call from when it was sent, both passes in it, so the first pass is not added again."""
    import openai

    gw, _ = thinking
    department = f"t{next(_departments)}"
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key="x", default_headers={"X-Ometer-Department": department}
    )
    chunks = list(
        client.chat.completions.create(
            model=THINKER.name,
            messages=HI,  # type: ignore[arg-type]
            max_tokens=2_000,
            response_format={"type": "json_object"},
            stream=True,
        )
    )
    assert chunks
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(department=department), 5)
    assert (span.status, span.duration_source) == ("ok", "measured")
    busy = span.prompt_eval_duration_ns + span.eval_duration_ns
    assert busy == span.latency_ns - (span.queue_ns or 0)
    assert span.cost_compute == round_half_even(busy, 1000)
