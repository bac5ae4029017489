"""Talking to Ollama: the client, error classification, retries and the circuit breaker.

Knows Ollama's wire format and nothing of spans, prices or the ledger.
"""

from ollama_meter.upstream._client import OPERATIONS, Message, Response, Upstream
from ollama_meter.upstream._errors import classify
from ollama_meter.upstream._resilience import (
    TRANSIENT,
    CircuitBreaker,
    RetryPolicy,
    breaker_for,
    is_transient,
    reset_breakers,
)

__all__ = [
    "OPERATIONS",
    "TRANSIENT",
    "CircuitBreaker",
    "Message",
    "Response",
    "RetryPolicy",
    "Upstream",
    "breaker_for",
    "classify",
    "is_transient",
    "reset_breakers",
]
