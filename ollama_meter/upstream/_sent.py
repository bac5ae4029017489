"""A request as the ``ollama`` client sends it: what the meter reads before the call.

The client takes more than JSON: bytes where Ollama reads text (a prompt, a message's
content, an embedding's input), ``ollama.Message`` and ``ollama.Options`` models, Python
functions as tools, images as bytes or file paths. It writes each as Ollama receives it;
the meter reads the request that way too, so what it bounds a call by and estimates its
tokens from is what is sent, whatever shape the caller gave it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import ollama


class _Writer(ollama.Client):
    """An ``ollama.Client`` that sends nothing: each call hands back the body it would send."""

    def _request(self, cls: Any, *args: Any, stream: bool = False, **kwargs: Any) -> Any:
        return kwargs.get("json")


# A transport that is never used: the default one loaded the CA bundle (about 90 ms, in
# every process that imports this) for a client that never connects.
_WRITER = _Writer(host="http://127.0.0.1:1", transport=httpx.BaseTransport())


def as_sent(operation: str, request: Mapping[str, Any]) -> Mapping[str, Any]:
    """``request`` as the client writes it for ``operation``; as given when the client
    refuses it (it raises that refusal when the call is made, and nothing is sent)."""
    extra = {} if operation == "embed" else {"stream": False}
    try:
        body = getattr(_WRITER, operation)(**request, **extra)
    except Exception:  # refused: the call raises it, classified, before anything is sent
        return request
    return body if isinstance(body, Mapping) else request
