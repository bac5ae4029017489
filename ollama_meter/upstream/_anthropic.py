"""Anthropic's Messages API on Ollama's ``/v1/messages``: its answers, and its wire format.

A whole answer is one ``message`` object: its reply in ``content`` blocks (``text``;
``thinking`` and ``tool_use`` are output that is not reply text), its counts in
``usage`` (``input_tokens``, ``output_tokens``). A streamed one is server-sent
events, an ``event:`` line beside each ``data:`` line, whose objects say their
``type``: ``message_start`` opens it, text arrives in ``content_block_delta``
events (``text_delta``), ``message_delta`` carries the stop reason and the usage,
and ``message_stop`` ends it. There is no ``[DONE]``: a stream that ends before its
``message_stop`` broke, ``[DONE]`` or not.

Ollama writes in ``message_start`` an input count it estimated from the request's
length (its chat has not counted anything yet); the count Ollama took arrives in
``message_delta``, which the meter reads for both. As on the OpenAI routes, a count
Ollama did not take is written 0: the meter estimates it, and times the call.

Errors are Anthropic's: ``{"type": "error", "error": {"type": ..., "message": ...}}``,
and the gateway writes its own (a refusal, a stream that broke) the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ollama_meter.errors import StreamError
from ollama_meter.upstream._classify import error_text, reported_error
from ollama_meter.upstream._vocabulary import Delta, Event, Final
from ollama_meter.upstream._wire import (
    OLLAMA,
    OPENAI,
    Reader,
    WireFormat,
    _counted,
    _OpenAI,
    _text,
    call_chars,
)

MESSAGES_PATH = "/v1/messages"
MESSAGES = "anthropic.messages"
"""The metered operation of ``POST /v1/messages``."""

_OTHER_DELTAS = frozenset({"thinking_delta", "signature_delta"})
"""Deltas of output that is not reply text (thinking); a tool call's input is one too, and
counts by its length."""
_UNTEXTED = frozenset({"thinking", "tool_use", "server_tool_use"})
"""Content blocks that are generated without being reply text."""
_CALLS = frozenset({"tool_use", "server_tool_use"})
"""Content blocks that are tool calls (a name, and an input object)."""
_UNENDED = (
    "the answer ended before its message_stop event (which ends a Messages stream): "
    "it is incomplete"
)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_KINDS = {"budget_exceeded": "billing_error", "rate_limited": "rate_limit_error"}
"""The meter's 429s in Anthropic's words: spent money is a billing error (do not
retry), a rate limit is one (retry later). Another status says its own (413: too large)."""


class MessagesReader:
    """Reads one ``/v1/messages`` answer, whole or event by event."""

    def __init__(self, *, stream: bool = False) -> None:
        self.stream = stream
        """The answer is a stream of events, which only its ``message_stop`` ends."""
        self.model: str | None = None
        self.response_id: str | None = None
        self.ended = False
        """The answer's end was read (a whole message, or ``message_stop``)."""
        self.complete = False
        self._reason: str | None = None
        self._input: int | None = None
        self._output: int | None = None

    def read(self, obj: Any) -> list[Event]:
        failure = reported_error(obj)
        if failure is not None:  # Anthropic's error event, or Ollama's {"error": ...}
            return [failure]
        kind = obj.get("type")
        if kind == "message":  # a whole answer
            self._usage(obj)
            return [*self._content(obj), *self._end()]
        if kind == "content_block_delta":
            delta = obj.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if delta.get("type") == "text_delta":
                text = _text(delta.get("text")) or ""
                return [Delta(text)] if text else []
            if delta.get("type") == "input_json_delta":  # a tool call's input, often whole
                calls = len(_text(delta.get("partial_json")) or "")
                return [Delta("", True, calls, calls, obj)]
            if delta.get("type") in _OTHER_DELTAS:
                return [Delta("", True, len(_text(delta.get("thinking")) or ""))]
            return []
        if kind == "content_block_start":
            block = obj.get("content_block")
            if not (isinstance(block, dict) and block.get("type") in _UNTEXTED):
                return []
            # A call's name comes here, its input in the deltas that follow.
            if block.get("type") not in _CALLS:
                return [Delta("", True)]
            calls = call_chars(block.get("name"), "")
            return [Delta("", True, calls, calls, obj)]
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            self._usage(obj["message"])
        elif kind == "message_delta":
            self._usage(obj)
        elif kind == "message_stop":
            return self._end()
        return []

    def finish(self) -> list[Event]:
        """The answer said it is over: a whole one without counts keeps its model (the meter
        estimates them); a stream is over at its ``message_stop`` only."""
        self.complete = True
        if self.ended:
            return []
        if self.stream:
            return [StreamError(_UNENDED)]
        return [Final(model=self.model, response_id=self.response_id)]

    def _usage(self, obj: dict[str, Any]) -> None:
        """What an object says of the answer: its id, model, stop reason and counts. A count
        ``message_delta`` writes replaces ``message_start``'s (Ollama's input count there is
        its estimate); a 0 is a count not taken, which the meter estimates."""
        self.model = _text(obj.get("model")) or self.model
        self.response_id = self.response_id or _text(obj.get("id"))  # message_delta has none
        delta = obj.get("delta")
        where = delta if isinstance(delta, dict) else obj
        self._reason = _text(where.get("stop_reason")) or self._reason
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if "input_tokens" in usage:
                self._input = _counted(usage["input_tokens"])
            if "output_tokens" in usage:
                self._output = _counted(usage["output_tokens"])

    @staticmethod
    def _content(message: dict[str, Any]) -> list[Event]:
        """The reply a whole answer carries, as one piece."""
        texts: list[str] = []
        other = False
        thought = calls = 0
        blocks = message.get("content")
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            other = other or kind in _UNTEXTED
            if kind == "text":
                texts.append(_text(block.get("text")) or "")
            elif kind == "thinking":
                thought += len(_text(block.get("thinking")) or "")
            elif kind in _CALLS:
                calls += call_chars(block.get("name"), block.get("input"))
        text = "".join(texts)
        called = message if calls else None  # its tool_use blocks: read where captured
        return [Delta(text, other, thought + calls, calls, called)] if text or other else []

    def _end(self) -> list[Event]:
        if self.ended:
            return []
        self.ended = self.complete = True
        return [
            Final(
                model=self.model,
                done_reason=self._reason,
                response_id=self.response_id,
                input_tokens=self._input,
                output_tokens=self._output,
            )
        ]


class _Anthropic(_OpenAI):
    """Server-sent events as OpenAI's are framed (``event:`` lines are not data), with
    Anthropic's objects, end and errors."""

    name: str = "anthropic"

    def reader(self, operation: str, *, stream: bool = False) -> Reader:
        return MessagesReader(stream=stream)

    def shown(self, frame: bytes, obj: dict[str, Any], *, hide_usage: bool) -> bytes | None:
        return frame

    def error_body(self, status: int, message: str, *, kind: str | None = None) -> dict[str, Any]:
        default = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        error_type = _KINDS.get(kind or "", default) if status == 429 else default
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def error_frame(self, message: str) -> bytes:
        body = json.dumps(self.error_body(500, message), ensure_ascii=False).encode()
        return b"event: error\ndata: " + body + b"\n\n"


ANTHROPIC: WireFormat = _Anthropic()


def wire_of_path(path: str) -> WireFormat:
    """The wire format a route's clients speak: Anthropic's on ``/v1/messages`` and under it
    (the Anthropic client's ``count_tokens`` and ``batches``, refused in its words), OpenAI's
    elsewhere under ``/v1/``, else Ollama's."""
    if path == MESSAGES_PATH or path.startswith(f"{MESSAGES_PATH}/"):
        return ANTHROPIC
    return OPENAI if path.startswith("/v1/") else OLLAMA


__all__ = ["ANTHROPIC", "MESSAGES", "MESSAGES_PATH", "MessagesReader", "error_text", "wire_of_path"]
