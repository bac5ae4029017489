"""Ollama's wire, byte for byte: Go's JSON and time encoding, and Go's words for bad requests.

Ollama is written in Go, so its JSON is compact and HTML-escaped, its times are
RFC 3339 with trimmed nanoseconds, and a request it cannot decode gets the Go
decoder's own message. Everything here is a pure function of its input; the
routes (``_ollama``, ``_openai``) build their answers from it.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ollama_meter.testing._models import EmulatedModel, ExpectedReply

OLLAMA_VERSION = "0.11.10"
"""What /api/version reports."""

# Ollama's own words for the faults it can really produce.
ERROR_500 = "llama runner process has terminated: exit status 2"
ERROR_503 = "server busy, please try again.  maximum pending requests exceeded"
ERROR_MIDSTREAM = "an error was encountered while running the model: unexpected EOF"

_MODIFIED_AT = datetime(2025, 1, 15, 9, 30, 0, tzinfo=UTC)


class Refusal(Exception):
    """A request Ollama would answer with an error status and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def go_json(obj: object) -> bytes:
    """``obj`` encoded as Go's ``json.Marshal`` does: compact, UTF-8, HTML-escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # These characters can only occur inside JSON strings, so a plain replace is safe.
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text.encode("utf-8", "replace")


def rfc3339_nano(ns: int | None = None) -> str:
    """A UTC timestamp as Go's ``time.Time`` marshals it (RFC 3339, nanoseconds trimmed)."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def stamp(moment: datetime) -> str:
    return rfc3339_nano(int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000)


def go_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def decode_body(raw: bytes, go_type: str) -> dict[str, Any]:
    """The JSON object in ``raw``, or the 400 Ollama's Go decoder would give."""
    if not raw.strip():
        raise Refusal(400, "missing request body")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise Refusal(400, "unexpected EOF") from None
        char = exc.doc[exc.pos]
        raise Refusal(400, f"invalid character {char!r} looking for beginning of value") from None
    except UnicodeDecodeError:
        raise Refusal(400, "invalid character looking for beginning of value") from None
    if not isinstance(value, dict):
        raise Refusal(
            400, f"json: cannot unmarshal {go_kind(value)} into Go value of type {go_type}"
        )
    return value


def unmarshal_error(value: object, go_field: str, go_type: str) -> str:
    return (
        f"json: cannot unmarshal {go_kind(value)} into Go struct field {go_field} of type {go_type}"
    )


def model_field(body: Mapping[str, Any], go_type: str) -> str:
    name = body.get("model")
    if name is None or name == "":
        raise Refusal(400, "model is required")
    if not isinstance(name, str):
        raise Refusal(400, unmarshal_error(name, f"{go_type.rpartition('.')[2]}.model", "string"))
    return name


def not_found(name: str, *, scheduled: bool = False) -> Refusal:
    """Ollama's 404 for a model it does not have, in the words of the handler that says it:
    chat and generate (and the OpenAI and Anthropic routes built on them) look the model up
    first (``model 'x' not found``); embeddings ask the scheduler for it (``scheduled``),
    whose error says ``model "x" not found, try pulling it first`` (Go's %q)."""
    if scheduled:
        return Refusal(404, f"model {json.dumps(name)} not found, try pulling it first")
    return Refusal(404, f"model '{name}' not found")


def details(model: EmulatedModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def modified_at(index: int) -> datetime:
    return _MODIFIED_AT - timedelta(days=index)


def options(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    options = body.get("options")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise Refusal(400, unmarshal_error(options, "options", "map[string]interface {}"))
    value = options.get("num_predict")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise Refusal(500, 'option "num_predict" must be of type integer')
    return options


def embed_inputs(body: Mapping[str, Any], key: str) -> list[str]:
    """The texts to embed: ``body[key]``, one string or a list of them."""
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise Refusal(400, "invalid input type")


_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_FOREVER = 2**63 - 1
"""What Ollama makes of a negative keep_alive: Go's longest duration (the model stays)."""


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> int:
    """Nanoseconds in ``text`` as Go's ``time.ParseDuration`` reads it (``1h30m``, ``.5s``,
    ``-0s``, a bare ``0``); :class:`Refusal` (400) with Go's words for what it refuses."""
    invalid = Refusal(400, f"time: invalid duration {_go_quote(text)}")
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        number = re.match(r"([0-9]*)(?:\.([0-9]*))?", rest)
        assert number is not None  # the pattern matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:  # neither digits before the dot nor after it
            raise invalid
        rest = rest[number.end() :]
        unit = re.match(r"[^0-9.]*", rest)
        assert unit is not None
        name = unit.group(0)
        if not name:
            raise Refusal(400, f"time: missing unit in duration {_go_quote(text)}")
        if name not in _UNITS:
            raise Refusal(
                400, f"time: unknown unit {_go_quote(name)} in duration {_go_quote(text)}"
            )
        rest = rest[len(name) :]
        scale = _UNITS[name]
        value = int(whole or "0") * scale
        if fraction:
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > _FOREVER:
            raise invalid
    return -total if negative else total


def keep_alive_ns(body: Mapping[str, Any]) -> int | None:
    """The request's ``keep_alive`` in nanoseconds as Ollama reads it (a number is seconds; a
    string Go's duration; a negative one keeps the model for ever), None when it sends none;
    :class:`Refusal` (400) with Go's words for a value Ollama cannot read."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, str):
        ns = parse_go_duration(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ns = -1 if value < 0 else int(value * 1_000_000_000)
    else:
        go_type = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}
        raise Refusal(400, f"Unsupported type: '{go_type.get(type(value), 'string')}'")
    return _FOREVER if ns < 0 else ns


def openai_texts(messages: Sequence[Any]) -> tuple[list[str], list[bytes]]:
    """Message texts and images the way Ollama's OpenAI layer reads them (``FromChatRequest``):
    one text per text part, an image per ``image_url`` part (a base64 data URI, decoded), and
    its 400s for anything else in a content list."""
    texts: list[str] = []
    images: list[bytes] = []
    for message in messages:
        if not isinstance(message, dict):
            raise Refusal(400, "invalid message format")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise Refusal(400, "invalid message format")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "image_url":
                    images.append(_data_uri(part.get("image_url")))
                else:
                    raise Refusal(400, "invalid message format")
        elif content is None and message.get("tool_calls"):
            texts.append("")
        else:
            raise Refusal(400, f"invalid message content type: {go_kind(content)}")
    return texts, images


_IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")),
)


def _data_uri(value: object) -> bytes:
    """An ``image_url`` part's picture: its ``url`` (or the value itself, a string), a base64
    data URI of a type Ollama takes, decoded; Ollama's 400 otherwise (it fetches no URL)."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise Refusal(400, "invalid message format")
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise Refusal(400, "invalid image input")
    try:
        return base64.b64decode(url.removeprefix(prefix), validate=True)
    except ValueError:
        raise Refusal(400, "invalid message format") from None


_SCHEMA_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def check_format(value: Any) -> None:
    """A ``format`` as Ollama's runner reads it, refused in its words (a 500, not a 400)."""
    if value in (None, "", "json"):
        return
    if not isinstance(value, dict):
        quoted = json.dumps(json.dumps(value))
        raise Refusal(
            500, f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
        )
    kind = value.get("type")
    if isinstance(kind, str) and kind not in _SCHEMA_TYPES:  # no grammar is made of it
        raise Refusal(500, "invalid JSON schema in format")


def check_images(images: Sequence[object]) -> None:
    """An image of no bytes, refused by Ollama's runner as it makes the sequence (a 500)."""
    if any(len(image) == 0 for image in images if isinstance(image, str | bytes)):
        raise Refusal(
            500,
            "llm predict error: Failed to create new sequence: failed to process inputs: "
            "received zero length image",
        )


def context_tokens(texts: Sequence[str], reply: ExpectedReply) -> list[int]:
    """A stand-in for the token ids Ollama returns as ``context`` on generate."""
    words = [w for text in texts for w in text.split()] + [p.strip() for p in reply.pieces]
    return [1 + sum(word.encode("utf-8", "surrogatepass")) % 128_000 for word in words]
