"""Talking to Ollama: the client, error classification, retries and the circuit breaker.

Knows Ollama's wire format and nothing of spans, prices or the ledger.
"""

from ollama_meter.upstream._client import OPERATIONS, Message, Response, Upstream
from ollama_meter.upstream._errors import classify, error_text
from ollama_meter.upstream._resilience import (
    TRANSIENT,
    CallAttempts,
    CircuitBreaker,
    RetryPolicy,
    breaker_for,
    is_transient,
    reset_breakers,
)

__all__ = [
    "OPERATIONS",
    "TRANSIENT",
    "CallAttempts",
    "CircuitBreaker",
    "Message",
    "Response",
    "RetryPolicy",
    "Upstream",
    "breaker_for",
    "classify",
    "error_text",
    "is_transient",
    "reset_breakers",
]
