"""Ollama's native wire format and OpenAI's: read into the meter's vocabulary, and spoken back.

Each format is one strategy, :data:`OLLAMA` or :data:`OPENAI`, that knows

- how a streamed answer is framed (NDJSON lines; SSE ``data:`` events ending in ``[DONE]``,
  or, on ``/v1/responses``, in a terminal event: ``_responses.py`` reads those);
- how to read an answer's objects into :mod:`events <._vocabulary>`, with a :class:`Reader`
  per call (OpenAI's carries the model, id and finish reason until the usage arrives);
- what an error looks like to a client of that format (a body, and the last line
  of a stream that broke), the way Ollama itself would send it.

Readers take JSON objects as decoded, or the ``ollama`` client's response objects
(which answer ``.get`` like a mapping), and read them defensively: what an
upstream sends is untrusted, and a field of the wrong type counts as absent.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final as Constant, Protocol

from ollama_meter.upstream._classify import reported_error
from ollama_meter.upstream._strict import json_object
from ollama_meter.upstream._unasked import without_usage
from ollama_meter.upstream._vocabulary import Delta, Event, Final, dimensions_of

OPENAI_PREFIX = "openai."


class _End:
    """OpenAI's ``data: [DONE]``: the stream is over."""

    def __repr__(self) -> str:
        return "END"


END: Constant = _End()


def _count(value: object) -> int | None:
    """A count or a duration as the upstream gave it: a non-negative integer, else unknown."""
    if type(value) is not int:  # as JSON reads one: no call (six counts an answer, every call)
        value = value if isinstance(value, int) and not isinstance(value, bool) else -1
    return value if value >= 0 else None


def _counted(value: object) -> int | None:
    """A count in an OpenAI ``usage``: Ollama writes there as 0 what its native answers omit
    (a count it did not take), so a zero is as unknown as an omission, and is estimated."""
    return _count(value) or None


def _text(value: object) -> str | None:
    return value if type(value) is str or isinstance(value, str) else None


def _some(value: object) -> bool:
    """A non-empty list (tool calls)."""
    return isinstance(value, list) and bool(value)


def _written(value: object) -> int:
    """The characters of a value as JSON writes it (a string's as it is); 0 if it is not JSON."""
    if isinstance(value, str):
        return len(value)
    try:
        return len(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return 0


def _calls_chars(calls: object) -> int:
    """The characters of tool calls as a model writes them (:func:`call_chars` of each)."""
    total = 0
    for call in calls if isinstance(calls, list) else []:
        getter = getattr(call, "get", None)
        function = getter("function") if callable(getter) else None
        get = getattr(function, "get", None)
        if callable(get):
            total += call_chars(get("name"), _plain(get("arguments")))
    return total


def call_chars(name: object, arguments: object) -> int:
    """One tool call's characters: its name and arguments as JSON (a string is that JSON
    already: OpenAI's ``arguments``, or a piece of them as a stream sends it)."""
    named = _written(json.dumps(name)) if isinstance(name, str) else 0
    return named + _written(arguments)


def _plain(value: object) -> object:
    """The ``ollama`` client's argument objects as the JSON they came as."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _excerpt(frame: bytes) -> str:
    return repr(frame[:60].decode(errors="replace")) + (" ..." if len(frame) > 60 else "")


class Malformed(ValueError):
    """An item of a stream that its wire format cannot carry (a line that is not a JSON object)."""


class Reader(Protocol):
    """Reads one call's answer, object by object."""

    complete: bool
    """The answer said it is over (Ollama's ``done``, OpenAI's ``[DONE]`` or a whole answer)."""

    def read(self, obj: Any) -> list[Event]:
        """The events in one object of the answer (a chunk, or the whole non-streamed answer)."""
        ...

    def finish(self) -> list[Event]:
        """The answer ended: what only its end tells."""
        ...


class OllamaReader:
    """Ollama's native objects: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``."""

    def __init__(self, operation: str) -> None:
        self.embedding = operation in ("embed", "embeddings")
        self.vectors = "embeddings" if operation == "embed" else "embedding"
        self.chat = operation == "chat"
        self.complete = False

    def read(self, obj: Any) -> list[Event]:
        failure = reported_error(obj)
        if failure is not None:
            return [failure]
        if self.embedding:  # one whole answer; embeddings produce no tokens
            self.complete = True
            vectors = obj.get(self.vectors)
            if isinstance(vectors, list) and not vectors:  # no input: the model is only loaded
                return [self._loaded(obj, None, only="load")]
            final = self._final(obj, output_tokens=0)
            return [replace(final, dimensions=dimensions_of(obj, self.vectors))]
        other = self._other_chars(obj)
        thought, calls, called = other or (0, 0, None)
        events: list[Event] = [
            Delta(self._reply_text(obj), other is not None, thought + calls, calls, called)
        ]
        if obj.get("done") is True:
            self.complete = True
            events.append(self._final(obj, output_tokens=_count(obj.get("eval_count"))))
        return events

    def finish(self) -> list[Event]:
        return []

    def _reply_text(self, obj: Any) -> str:
        if not self.chat:
            return _text(obj.get("response")) or ""
        message = obj.get("message")
        if type(message) is dict:  # as JSON reads it: without a look for its ``get``
            return _text(message.get("content")) or ""
        getter = getattr(message, "get", None)
        return (_text(getter("content")) or "") if callable(getter) else ""

    def _other_chars(self, obj: Any) -> tuple[int, int, object] | None:
        """The characters of the thinking and of the tool calls ``obj`` carries (generated,
        though not reply text), and the calls; None when it carries neither."""
        if not self.chat:
            thinking, calls = _text(obj.get("thinking")), obj.get("tool_calls")
        else:
            message = obj.get("message")
            if type(message) is dict and "thinking" not in message and "tool_calls" not in message:
                return None  # most chunks: a text only (a chunk of a stream, every chunk)
            getter = getattr(message, "get", None)
            if not callable(getter):
                return None
            thinking, calls = _text(getter("thinking")), getter("tool_calls")
        if not thinking and not _some(calls):
            return None
        return len(thinking or ""), _calls_chars(calls), calls

    @staticmethod
    def _final(obj: Any, *, output_tokens: int | None) -> Final:
        reason = _text(obj.get("done_reason"))
        if reason in _NOTHING_RUN:
            return OllamaReader._loaded(obj, reason, only=reason)
        return Final(
            model=_text(obj.get("model")),
            done_reason=reason,
            input_tokens=_count(obj.get("prompt_eval_count")),
            output_tokens=output_tokens,
            total_ns=_count(obj.get("total_duration")),
            load_ns=_count(obj.get("load_duration")),
            prompt_eval_ns=_count(obj.get("prompt_eval_duration")),
            eval_ns=_count(obj.get("eval_duration")),
        )

    @staticmethod
    def _loaded(obj: Any, reason: str | None, *, only: str | None) -> Final:
        """An answer to a call that only loaded the model (``only``: ``load``) or unloaded it:
        an empty prompt, no messages, no input to embed. Ollama sends no counts because
        nothing was evaluated or generated: those omissions are zeros, not counts to estimate."""
        return Final(
            model=_text(obj.get("model")),
            done_reason=reason,
            input_tokens=0,
            output_tokens=0,
            prompt_eval_ns=0,
            eval_ns=0,
            only=only,
        )


_NOTHING_RUN = frozenset({"load", "unload"})
"""Ollama's ``done_reason`` for a chat or generate call that only loaded or unloaded the model."""


class OpenAIReader:
    """OpenAI's objects on Ollama's ``/v1`` routes: text in choices, counts in ``usage``.

    Ollama's OpenAI routes report no durations: the meter's clock stands in.
    """

    def __init__(self, operation: str) -> None:
        self.embedding = operation == f"{OPENAI_PREFIX}embeddings"
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.response_id: str | None = None  # on every chunk of a stream: the first one's
        self.dimensions: int | None = None
        self.usage_seen = self.complete = False

    def read(self, obj: Any) -> list[Event]:
        failure = reported_error(obj)
        if failure is not None:
            return [failure]
        events: list[Event] = []
        self.model = _text(obj.get("model")) or self.model
        self.response_id = self.response_id or _text(obj.get("id"))
        self.dimensions = dimensions_of(obj, "data") if self.embedding else None
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if text is not None else choice.get("text")
            text = text if isinstance(text, str) else ""
            other = isinstance(delta, dict) and (
                bool(_text(delta.get("reasoning"))) or _some(delta.get("tool_calls"))
            )
            if text or other:
                thought = calls = 0
                called = None
                if other and isinstance(delta, dict):
                    thought = len(_text(delta.get("reasoning")) or "")
                    called = delta.get("tool_calls")
                    calls = _calls_chars(called)
                events.append(Delta(text, other, thought + calls, calls, called))
            self.finish_reason = _text(choice.get("finish_reason")) or self.finish_reason
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage_seen = True
            events.append(
                self._final(
                    _counted(usage.get("prompt_tokens")),
                    0 if self.embedding else _counted(usage.get("completion_tokens")),
                )
            )
        return events

    def finish(self) -> list[Event]:
        """No usage came: keep the model and finish reason; the meter estimates the counts."""
        self.complete = True
        return [] if self.usage_seen else [self._final(None, None)]

    def _final(self, input_tokens: int | None, output_tokens: int | None) -> Final:
        final = Final(self.model, self.finish_reason, input_tokens, output_tokens)
        return replace(final, response_id=self.response_id, dimensions=self.dimensions)

    @staticmethod
    def usage_only(obj: dict[str, Any]) -> bool:
        """A chunk that carries only the usage (the one the gateway asked for on the client's behalf)."""
        usage = obj.get("usage")
        return isinstance(usage, dict) and bool(usage) and not obj.get("choices")


_ANSWER_KEYS = {
    "chat": "done",
    "generate": "done",
    f"{OPENAI_PREFIX}embeddings": "data",
    f"{OPENAI_PREFIX}chat": "choices",
    f"{OPENAI_PREFIX}completions": "choices",
    f"{OPENAI_PREFIX}responses": "output",
    "anthropic.messages": "content",
}


def lacks(operation: str, obj: object) -> str | None:
    """What a non-streamed 200's body (decoded) lacks to be an answer to ``operation``; None: nothing.

    Ollama's whole chat or generate answer is one object with ``done: true``, an OpenAI one
    has its ``choices`` or ``data``; an Ollama embedding answer is an object (for no input,
    it carries no vectors: older Ollama sent only the model).
    """
    if not isinstance(obj, dict):
        return "the body is not a JSON object"
    key = _ANSWER_KEYS.get(operation)
    if key == "done" and obj.get("done") is not True:
        return 'the object does not say "done": true'
    return None if key is None or key in obj else f"the object has no {key!r}"


class WireFormat(Protocol):
    """One wire format, as the gateway reads it from Ollama and speaks it to clients."""

    name: str
    separator: bytes
    """What ends one item of a stream."""
    stream_media_type: str | None
    """The media type of a stream; None: the upstream's own."""

    def reader(self, operation: str, *, stream: bool = False) -> Reader:
        """A reader of one call's answer (``stream``: a streamed one, read item by item)."""
        ...

    def decode(self, frame: bytes) -> dict[str, Any] | _End | None:
        """One item of a stream: an object, :data:`END`, or None (not an item: relayed as is,
        not read); raises :class:`Malformed` for an item that is not one."""
        ...

    def shown(self, frame: bytes, obj: dict[str, Any], *, hide_usage: bool) -> bytes | None:
        """What the client gets of the item ``frame`` (without its separator), ``obj`` decoded:
        None for nothing (a usage chunk it did not ask for); see :mod:`._unasked`."""
        ...

    def error_body(self, status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
        """An error answer; ``kind``, the meter's error type, says why (``budget_exceeded``...)."""
        ...

    def error_frame(self, message: str) -> bytes:
        """The last item of a stream that broke, with its separator."""
        ...


class _Ollama:
    name: str = "ollama"
    separator: bytes = b"\n"
    stream_media_type: str | None = None

    def reader(self, operation: str, *, stream: bool = False) -> Reader:
        return OllamaReader(operation)

    def decode(self, frame: bytes) -> dict[str, Any] | _End | None:
        obj = json_object(frame)
        if obj is None:
            raise Malformed(f"a line that is not a JSON object: {_excerpt(frame)}")
        return obj

    def shown(self, frame: bytes, obj: dict[str, Any], *, hide_usage: bool) -> bytes | None:
        return frame

    def error_body(self, status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
        return {"error": message}

    def error_frame(self, message: str) -> bytes:
        return json.dumps(self.error_body(500, message), ensure_ascii=False).encode() + b"\n"


_OPENAI_ERRORS = {
    "budget_exceeded": ("insufficient_quota", "insufficient_quota"),
    "rate_limited": ("requests", "rate_limit_exceeded"),
}
"""The meter's 429s in OpenAI's words (``type``, ``code``), as OpenAI's own 429s say them:
clients tell spent money (do not retry) from a rate limit (retry later) by these. Another
status says its own: a 413 (a body, or a prompt no wait lets in) is too large, not a rate."""
_OPENAI_STATUSES: dict[int, tuple[str, str | None]] = {
    413: ("invalid_request_error", "request_too_large")
}


class _OpenAI:
    name: str = "openai"
    separator: bytes = b"\n\n"
    stream_media_type: str | None = "text/event-stream"

    def reader(self, operation: str, *, stream: bool = False) -> Reader:
        if operation == f"{OPENAI_PREFIX}responses":  # its own objects and end (no [DONE])
            from ollama_meter.upstream._responses import ResponsesReader

            return ResponsesReader(stream=stream)
        return OpenAIReader(operation)

    def decode(self, frame: bytes) -> dict[str, Any] | _End | None:
        """An event's data: its ``data:`` lines joined (comments, ``event:`` and ``id:`` lines
        beside them are not data); None for an event without any, a keep-alive comment. An
        event not all UTF-8 is malformed: the official clients decode every line strictly
        (OpenAI's raised on a comment they would skip), and it is relayed as it came."""
        if not frame.isascii():
            try:
                frame.decode("utf-8")
            except UnicodeDecodeError:
                raise Malformed(f"an event that is not UTF-8: {_excerpt(frame)}") from None
        lines = frame.split(b"\n")
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return None
        payload = b"\n".join(data).strip()
        if payload == b"[DONE]":
            return END
        obj = json_object(payload)
        if obj is None:
            raise Malformed(f"an event whose data is not a JSON object: {_excerpt(frame)}")
        return obj

    def shown(self, frame: bytes, obj: dict[str, Any], *, hide_usage: bool) -> bytes | None:
        if not hide_usage or "usage" not in obj:
            return frame
        return None if OpenAIReader.usage_only(obj) else without_usage(frame, obj)

    def error_body(self, status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
        default = "invalid_request_error" if status < 500 else "api_error"
        said = _OPENAI_ERRORS.get(kind or "") if status == 429 else None
        error_type, code = said or _OPENAI_STATUSES.get(status, (default, None))
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    def error_frame(self, message: str) -> bytes:
        body = json.dumps(self.error_body(500, message), ensure_ascii=False).encode()
        return b"data: " + body + b"\n\n"


OLLAMA: Constant[WireFormat] = _Ollama()
OPENAI: Constant[WireFormat] = _OpenAI()


def wire_for(operation: str) -> WireFormat:
    """The wire format of a metered operation (``openai.*`` operations speak OpenAI's)."""
    return OPENAI if operation.startswith(OPENAI_PREFIX) else OLLAMA


__all__ = [
    "END",
    "OLLAMA",
    "OPENAI",
    "Malformed",
    "OllamaReader",
    "OpenAIReader",
    "Reader",
    "WireFormat",
    "json_object",
    "lacks",
]
