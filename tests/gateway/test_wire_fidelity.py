"""The gateway reads Ollama's documented fields as Ollama does, and meters what they mean.

Driven through the official ``ollama`` client against the emulator, which answers as
Ollama's API documentation says Ollama does.
"""

from __future__ import annotations

from typing import Any

import ollama
import pytest

from ollama_meter.ledger import SpanFilter
from tests.gateway.conftest import Gateway


def spans(gw: Gateway) -> list[Any]:
    return gw.ledger.latest(SpanFilter(), 100)


@pytest.mark.parametrize(
    "fields",
    [
        {"system": "You are a terse assistant for the sales team"},
        {"suffix": "    return result"},
        {"template": "{{ .System }} {{ .Prompt }}"},
        {"images": ["iVBORw0KGgo="]},
        {"system": "You are terse", "keep_alive": 0},
    ],
)
def test_a_generate_with_an_empty_prompt_only_loads_whatever_else_it_sends(
    sqlite_gateway: Gateway, fields: dict[str, Any]
) -> None:
    """Ollama loads the model for any generate whose ``prompt`` is empty (unloads it with
    ``keep_alive: 0``), whatever system message, suffix, template or images come with it:
    nothing is evaluated. The span counts the 0 tokens Ollama means, not an estimate of
    texts Ollama never read."""
    reply = ollama.Client(host=sqlite_gateway.url).generate(model="llama3.1:8b", **fields)
    reason = "unload" if "keep_alive" in fields else "load"
    assert (reply.done_reason, reply.response, reply.eval_count) == (reason, "", None)
    (span,) = spans(sqlite_gateway)
    assert (span.status, span.done_reason) == ("ok", reason)
    assert (span.input_tokens, span.output_tokens, span.token_source) == (0, 0, "reported")
    assert (span.prompt_eval_duration_ns, span.eval_duration_ns) == (0, 0)
