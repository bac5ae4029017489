"""How a request asks the model to generate: its sampling settings, read for telemetry.

Each wire format names them its own way: Ollama's native ``options``, the fields of OpenAI's
Chat Completions and Completions, Anthropic's Messages, the Responses API. The values are
the caller's, so anything may be in them: only what a model reads is kept (a number, finite;
an integer within 64 bits; stop sequences as texts, at most :data:`MAX_STOPS` of
:data:`MAX_STOP_CHARS`), the rest is as if not sent. Reading never fails a call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ollama_meter.records import Asked, storable_text

MAX_STOPS = 64
MAX_STOP_CHARS = 256
"""64 sequences of 256 characters: all the 16,384 characters an exported text holds."""
_INT64 = range(-(2**63), 2**63)

_NATIVE = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
    "stop": "stop_sequences", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}  # fmt: skip
_OPENAI = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop_sequences",
    "n": "choice_count", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}  # fmt: skip
FIELDS: dict[str, dict[str, str]] = {
    "chat": _NATIVE,
    "generate": _NATIVE,
    "openai.chat": _OPENAI,
    "openai.completions": _OPENAI,
    "anthropic.messages": {
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "stop_sequences": "stop_sequences",
    },
    "openai.responses": {"temperature": "temperature", "top_p": "top_p"},
}
"""Each operation that generates: its request's fields → :class:`Asked`'s (where Ollama reads
them: native ``options``, else the body). Embeddings have none."""


def _integer(value: object, truncated: bool) -> int | None:
    if truncated and isinstance(value, float) and math.isfinite(value):
        value = int(value)  # Ollama's options: JSON numbers, which it truncates
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT64:
        return None
    return value


def _number(value: object) -> float | None:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    whole = _integer(value, truncated=False)  # 10**400 is no setting (nor a float)
    return None if whole is None else float(whole)


def _stops(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        return None
    if not all(isinstance(stop, str) for stop in value):
        return None
    return tuple(storable_text(stop, MAX_STOP_CHARS) for stop in value[:MAX_STOPS])


_JSON = ("json_object", "json_schema")


def _output_type(operation: str, body: Mapping[str, Any]) -> str | None:
    """The kind of reply ``body`` asks for (``gen_ai.output.type``): ``json`` for Ollama's
    ``format`` (``json`` or a schema), for OpenAI's ``response_format`` or a Responses request's
    ``text.format`` of a JSON type, ``text`` where those ask for text; None where none is asked
    (or what is there is none Ollama reads)."""
    if operation in ("chat", "generate"):
        given = body.get("format")
        return "json" if given == "json" or (isinstance(given, dict) and given) else None
    if operation == "openai.responses":
        text = body.get("text")
        given = text.get("format") if isinstance(text, dict) else None
    else:  # Chat Completions' (Ollama reads no format of a Completions or Messages request)
        given = body.get("response_format") if operation == "openai.chat" else None
    kind = given.get("type") if isinstance(given, dict) else None
    return "json" if kind in _JSON else "text" if kind == "text" else None


def asked_of(
    operation: str, body: Mapping[str, Any], options: Mapping[str, Any], cap: int | None
) -> Asked | None:
    """The settings ``body`` (of ``operation``, its native ``options`` read) asks the model to
    generate with, the reply ``cap`` it sets among them; None where it sets none."""
    names = FIELDS.get(operation)
    if names is None:
        return None
    native = names is _NATIVE
    sent = options if native else body
    found: dict[str, Any] = {}
    for key, name in names.items():
        if key not in sent:
            continue
        value = sent[key]
        if name == "stop_sequences":
            found[name] = _stops(value)
        elif name == "seed":
            found[name] = _integer(value, truncated=native)
        elif name == "choice_count":
            count = _integer(value, truncated=False)
            found[name] = count if count is not None and count > 0 else None
        else:
            found[name] = _number(value)
    if cap is not None and cap in _INT64:
        found["max_tokens"] = cap
    found["output_type"] = _output_type(operation, body)
    found = {name: value for name, value in found.items() if value is not None}
    return Asked(**found) if found else None
