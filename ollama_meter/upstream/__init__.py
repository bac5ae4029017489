"""Talking to Ollama: one retry-and-breaker policy, one classifier, two thin transports.

- ``_resilience.py``: circuit breakers and retries, one policy for every call;
- ``_classify.py``: what went wrong, as one ``UpstreamError`` with one message;
- ``_vocabulary.py``: what an answer says, in the meter's words (``Delta``, ``Final``);
- ``_wire.py``: Ollama's native wire format and OpenAI's, read into that vocabulary;
- ``_called.py``: the tool calls a reply made, on every route;
- ``_options.py``: the kind of value each of Ollama's model options takes;
- ``_sdk.py``: the ``ollama`` client transport (CLI, Python API);
- ``_pooled.py``: the pooled aiohttp transport (the gateway).

Knows nothing of spans, prices or the ledger. The transports, and so the client
libraries, load on first use (PEP 562): the meter imports this package's
vocabulary without loading ``ollama``, ``httpx`` or ``aiohttp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names
from ollama_meter.upstream._anthropic import ANTHROPIC, wire_of_path
from ollama_meter.upstream._called import block_call, item_call, tool_calls
from ollama_meter.upstream._classify import Failure, error_text, retry_after_seconds
from ollama_meter.upstream._frames import Frames
from ollama_meter.upstream._options import OPTION_KINDS, option_problem
from ollama_meter.upstream._resilience import (
    TRANSIENT,
    CallAttempts,
    CircuitBreaker,
    Resilient,
    RetryPolicy,
    Waits,
    breaker_for,
    caller_of,
    is_transient,
    reset_breakers,
)
from ollama_meter.upstream._vocabulary import Delta, Event, Final
from ollama_meter.upstream._wire import (
    END,
    OLLAMA,
    OPENAI,
    Malformed,
    Reader,
    WireFormat,
    wire_for,
)

if TYPE_CHECKING:
    from ollama_meter.upstream._pooled import PooledUpstream, Refusal, gateway_status
    from ollama_meter.upstream._sdk import OPERATIONS, Message, Response, Upstream

__all__ = [
    "ANTHROPIC",
    "END",
    "OLLAMA",
    "OPENAI",
    "OPERATIONS",
    "OPTION_KINDS",
    "TRANSIENT",
    "CallAttempts",
    "CircuitBreaker",
    "Delta",
    "Event",
    "Failure",
    "Final",
    "Frames",
    "Malformed",
    "Message",
    "PooledUpstream",
    "Reader",
    "Refusal",
    "Resilient",
    "Response",
    "RetryPolicy",
    "Upstream",
    "Waits",
    "WireFormat",
    "block_call",
    "breaker_for",
    "caller_of",
    "error_text",
    "gateway_status",
    "is_transient",
    "item_call",
    "option_problem",
    "reset_breakers",
    "retry_after_seconds",
    "tool_calls",
    "wire_for",
    "wire_of_path",
]

_LAZY = {
    "OPERATIONS": "._sdk",
    "Message": "._sdk",
    "Response": "._sdk",
    "Upstream": "._sdk",
    "PooledUpstream": "._pooled",
    "Refusal": "._pooled",
    "gateway_status": "._pooled",
}


__getattr__ = lazy_names(globals(), _LAZY)
