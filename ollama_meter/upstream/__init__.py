"""Talking to Ollama: the client, stream reading and error classification.

Knows Ollama's wire format and nothing of spans, prices or the ledger.
"""

from ollama_meter.upstream._client import Message, Upstream
from ollama_meter.upstream._errors import classify

__all__ = ["Message", "Upstream", "classify"]
