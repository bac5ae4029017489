"""OpenAI's Responses API on Ollama's ``/v1/responses``: its answers read into the meter's events.

A whole answer is one ``response`` object: its text in ``output`` message items, its
counts in ``usage`` (``input_tokens``, ``output_tokens``). A streamed one is
server-sent events, an ``event:`` line beside each ``data:`` line (framed and
decoded as OpenAI's other streams are), whose objects say their ``type``: text
arrives in ``response.output_text.delta`` events, and the stream ends with
``response.completed`` (or ``response.incomplete`` / ``response.failed``),
whose ``response`` carries the usage. There is no ``[DONE]``: the terminal event
is the answer's end, and a stream that ends without one broke, ``[DONE]`` or not (a
client stops reading at a ``[DONE]``, so one before the end is not relayed as one).

As on the other OpenAI routes, Ollama writes a count it did not take as 0, and
reports no durations: the meter estimates the one and times the other.
"""

from __future__ import annotations

from typing import Any

from ollama_meter.errors import StreamError
from ollama_meter.upstream._classify import error_text, mid_stream_error, reported_error
from ollama_meter.upstream._vocabulary import Delta, Event, Final
from ollama_meter.upstream._wire import _counted, _text, call_chars

_TEXT = "response.output_text.delta"
_OTHER = frozenset({
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
})  # fmt: skip
"""Deltas of output that is not reply text (thinking, a tool call's arguments)."""
_ARGUMENTS = "response.function_call_arguments.delta"
_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_UNENDED = (
    "the answer ended before its response.completed event (which ends a Responses stream "
    "and carries its usage): it is incomplete"
)
_UNTEXTED = frozenset({"reasoning", "function_call"})
"""Output items that are generated without being reply text."""


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


class ResponsesReader:
    """Reads one ``/v1/responses`` answer, whole or event by event."""

    def __init__(self, *, stream: bool = False) -> None:
        self.stream = stream
        """The answer is a stream of events, which only its terminal event ends."""
        self.model: str | None = None
        self.response_id: str | None = None
        self.ended = False
        """The answer's final record was given (its end, with or without usage)."""
        self.complete = False

    def read(self, obj: Any) -> list[Event]:
        failure = reported_error(obj)
        if failure is not None:
            return [failure]
        kind = obj.get("type")
        if kind == "error":  # OpenAI's error event: {"type": "error", "message": ...}
            return [mid_stream_error(error_text(obj))]
        if obj.get("object") == "response":  # a whole answer
            return [*self._output(obj), *self._end(obj)]
        if kind == _TEXT:
            text = _text(obj.get("delta")) or ""
            return [Delta(text)] if text else []
        if kind in _OTHER:
            piece = _text(obj.get("delta")) or ""
            if kind != _ARGUMENTS:
                return [Delta("", True, len(piece))] if piece else []
            calls = len(piece)  # a call's arguments, often whole
            return [Delta("", True, calls, calls, obj)] if piece else []
        item = obj.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict):
            if item.get("type") != "function_call":
                return []
            # A call's name comes here, its arguments in the deltas that follow.
            calls = call_chars(item.get("name"), _text(item.get("arguments")) or "")
            return [Delta("", True, calls, calls, obj)]
        response = obj.get("response")
        if not isinstance(response, dict):
            return []
        self._said(response)
        return self._end(response) if kind in _ENDS else []

    def finish(self) -> list[Event]:
        """The answer said it is over: a whole one without counts keeps its model (the meter
        estimates them); a stream is over at its terminal event only, and a ``[DONE]`` before
        one leaves it incomplete."""
        self.complete = True
        if self.ended:
            return []
        if self.stream:
            return [StreamError(_UNENDED)]
        return [Final(model=self.model, response_id=self.response_id)]

    @staticmethod
    def _output(response: dict[str, Any]) -> list[Event]:
        """The reply a whole answer carries, as one piece."""
        texts: list[str] = []
        other = False
        thought = calls = 0
        items = response.get("output")
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            other = other or kind in _UNTEXTED
            if kind == "function_call":
                calls += call_chars(item.get("name"), _text(item.get("arguments")) or "")
            parts = item.get("content") if kind in ("message", "reasoning") else None
            if kind == "reasoning":  # its summary, or its text
                parts = [*(_list(item.get("summary"))), *(_list(parts))]
            for part in _list(parts):
                if not isinstance(part, dict):
                    continue
                if kind == "message" and part.get("type") == "output_text":
                    texts.append(_text(part.get("text")) or "")
                elif kind == "reasoning":
                    thought += len(_text(part.get("text")) or "")
        text = "".join(texts)
        called = response if calls else None  # its function_call items: read where captured
        return [Delta(text, other, thought + calls, calls, called)] if text or other else []

    def _said(self, response: dict[str, Any]) -> None:
        """The model and the id a ``response`` object (a whole answer, an event's) gives."""
        self.model = _text(response.get("model")) or self.model
        self.response_id = self.response_id or _text(response.get("id"))

    def _end(self, response: dict[str, Any]) -> list[Event]:
        """The answer's end: its usage, the model that answered and how it ended."""
        self.ended = self.complete = True
        self._said(response)
        status = _text(response.get("status"))
        if status == "failed":
            return [mid_stream_error(error_text(response.get("error") or "the response failed"))]
        details = response.get("incomplete_details")
        reason = _text(details.get("reason")) if isinstance(details, dict) else None
        usage = response.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return [
            Final(
                model=self.model,
                done_reason=reason or status,
                response_id=self.response_id,
                input_tokens=_counted(usage.get("input_tokens")),
                output_tokens=_counted(usage.get("output_tokens")),
            )
        ]
