"""Ollama's OpenAI Responses route, ``POST /v1/responses`` (Ollama 0.13.3 and later).

Ollama turns the request into a chat (``instructions`` a system message, a string
``input`` a user message, each message item a message with its text parts joined,
``max_output_tokens`` its ``num_predict``) and its answer into a Responses object:
a whole one written by Go's encoder in its struct's field order, or server-sent
events (``event:`` and ``data:`` lines, no ``[DONE]``) whose data are Go maps, so
their keys come sorted. ``response.completed`` ends the stream and carries the usage;
a stream that breaks simply ends without it (Ollama writes no error event).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ollama_meter.testing._faults import WILD_COUNT, WILD_REPLY, Fault, early
from ollama_meter.testing._models import reply_for_texts
from ollama_meter.testing._openai import OpenAIRoutes, _openai_calls
from ollama_meter.testing._wire import (
    Refusal,
    decode_body,
    go_json,
    go_kind,
    model_field,
    unmarshal_error,
)

GO_TYPE = "openai.ResponsesRequest"
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_PART_TYPES = frozenset({*_TEXT_PARTS, "input_image", "input_file"})
_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})


def _go_number(value: float) -> float | int:
    """A float64 as Go writes it: ``1``, not ``1.0``."""
    return int(value) if float(value).is_integer() else value


def _sorted(value: Any) -> Any:
    """``value`` with every object's keys sorted, as Go marshals a ``map[string]any``."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + go_json(_sorted(data)) + b"\n\n"


def _content_text(content: object, where: str) -> str:
    """A message item's text, its text parts joined, as Ollama's converter joins them."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise Refusal(400, f"{where}: content must be a string or array")
    text = ""
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PART_TYPES:
            raise Refusal(400, f"{where}: content[{index}]: unknown content type: {kind}")
        if kind == "input_file":
            raise Refusal(400, "file inputs are not currently supported")
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            text += part["text"]
    return text


def request_texts(body: dict[str, Any]) -> list[str]:
    """The chat message texts Ollama makes of a Responses request, in order."""
    texts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        texts.append(instructions)
    value = body.get("input")
    if isinstance(value, str):
        return [*texts, value] if value else texts
    if value is not None and not isinstance(value, list):
        raise Refusal(400, f"input must be a string or array: got {go_kind(value)}")
    for index, item in enumerate(value or []):
        if not isinstance(item, dict):
            raise Refusal(400, f"input[{index}]: input item missing required 'type' field")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind not in _ITEM_TYPES:
            problem = (
                f"unknown input item type: {json.dumps(kind)}"
                if kind
                else ("input item missing required 'type' field")
            )
            raise Refusal(400, f"input[{index}]: {problem}")
        if kind == "message":
            texts.append(_content_text(item.get("content"), f"input[{index}]"))
        elif kind == "function_call_output":
            texts.append(_content_text(item.get("output"), f"input[{index}]"))
    return texts


class ResponsesRoutes(OpenAIRoutes):
    def _openai_responses(self, raw: bytes) -> None:
        emu = self.emulator
        try:
            body = decode_body(raw, GO_TYPE)
            cap = body.get("max_output_tokens")
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
                field = "ResponsesRequest.max_output_tokens"
                raise Refusal(400, unmarshal_error(cap, field, "int"))
            texts = request_texts(body)
            name = model_field(body, GO_TYPE)
            model = self._lookup(name)
            if model.embedding:
                raise Refusal(400, f"{json.dumps(name)} does not support chat")
        except Refusal as exc:
            self._openai_error(exc.status, exc.message)
            return
        stream = body.get("stream") is True
        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        if fault is Fault.ERROR_DONE:
            fault = Fault.MIDSTREAM_ERROR
        if self.instead(early(fault, generating=True, streaming=stream), self._openai_error):
            return
        options = None if cap is None or fault is Fault.IGNORE_CAP else {"num_predict": cap}
        value = body.get("input")
        last = value[-1] if isinstance(value, list) and value else None
        answered = isinstance(last, dict) and last.get("type") == "function_call_output"
        tools = None if answered else offered_tools(body.get("tools"), "parameters")
        reply = reply_for_texts(model, texts, options, tools=tools)
        emu._warm(model)
        counted = fault is not Fault.OMIT_COUNTS
        prompt_tokens = reply.prompt_tokens if counted else 0
        output_tokens = reply.output_tokens if counted else 0
        if fault is Fault.INFLATE_COUNTS:
            prompt_tokens = WILD_COUNT
        elif fault is Fault.INFLATE_REPLY:
            output_tokens = WILD_REPLY
        usage: dict[str, Any] | None = {
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if fault is Fault.NO_USAGE:
            usage = None
        number = emu._next_completion_id()
        response_id, item_id = f"resp_{number}", f"msg_{number}"
        echo = _Echo(body, name, response_id)
        calls = [
            {"id": f"fc_{number}_{i}", "type": "function_call", "status": "completed",
             "call_id": call["id"], "name": call["function"]["name"],
             "arguments": call["function"]["arguments"]}
            for i, call in enumerate(_openai_calls(reply.tool_calls, response_id))
        ]  # fmt: skip
        if not stream:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            message = {
                "id": item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [_text_part(reply.content)],
            }
            self._send_json(200, echo.whole(calls or [message], usage), newline=True)
            return

        sequence = iter(range(10**9))
        started = {"response": False, "content": False}
        text = {"so_far": ""}

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return _event(kind, {**data, "type": kind, "sequence_number": next(sequence)})

        def opening() -> bytes:
            if started["response"]:
                return b""
            started["response"] = True
            return b"".join(
                event(kind, {"response": echo.streamed("in_progress", [], None)})
                for kind in ("response.created", "response.in_progress")
            )

        def piece(delta: str | dict[str, Any]) -> bytes:
            out = opening()
            if isinstance(delta, dict):  # a function call: its arguments in one piece
                index = {"output_index": calls.index(delta)}
                at = {"item_id": delta["id"], **index}
                added = {**delta, "status": "in_progress", "arguments": ""}
                out += event("response.output_item.added", {**index, "item": added})
                whole = delta["arguments"]
                out += event("response.function_call_arguments.delta", {**at, "delta": whole})
                out += event("response.function_call_arguments.done", {**at, "arguments": whole})
                return out + event("response.output_item.done", {**index, "item": delta})
            where = {"item_id": item_id, "output_index": 0}
            if not started["content"]:
                started["content"] = True
                item: dict[str, Any] = {"id": item_id, "type": "message"}
                item |= {"status": "in_progress", "role": "assistant", "content": []}
                out += event("response.output_item.added", {"output_index": 0, "item": item})
                out += event(
                    "response.content_part.added",
                    {**where, "content_index": 0, "part": _text_part("")},
                )
            text["so_far"] += delta
            data = {**where, "content_index": 0, "delta": delta, "logprobs": []}
            return out + event("response.output_text.delta", data)

        def ending() -> list[bytes]:
            out = opening()
            output: list[Any] | None = None
            if started["content"]:
                whole = text["so_far"]
                where = {"item_id": item_id, "output_index": 0, "content_index": 0}
                done: dict[str, Any] = {"id": item_id, "type": "message"}
                done |= {"status": "completed", "role": "assistant", "content": [_text_part(whole)]}
                out += event("response.output_text.done", {**where, "text": whole, "logprobs": []})
                out += event("response.content_part.done", {**where, "part": _text_part(whole)})
                out += event("response.output_item.done", {"output_index": 0, "item": done})
                output = [done]
            final = echo.streamed("completed", calls or output, usage)
            final["completed_at"] = int(time.time())
            return [out + event("response.completed", {"response": final})]

        sent: list[str | dict[str, Any]] = [*reply.pieces, *calls]
        self.stream(
            "text/event-stream",
            sent,
            piece,
            limit=armed.cut_after if armed else None,
            cut=fault,
            error=b"",  # Ollama writes nothing for a failure mid-stream: the events just stop
            ending=ending,
        )


def offered_tools(tools: object, schema: str) -> list[dict[str, Any]] | None:
    """A Responses or Messages request's tools as the chat's Ollama makes of them (a flat
    ``name`` and its ``schema`` field: the function's parameters); None: none offered."""
    offered = [
        {"type": "function", "function": {"name": t.get("name"), "parameters": t.get(schema)}}
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict)
    ]
    return offered or None


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Echo:
    """The request's settings as Ollama echoes them in every response object it writes."""

    def __init__(self, body: dict[str, Any], model: str, response_id: str) -> None:
        self.body, self.model, self.id = body, model, response_id
        instructions = body.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) and instructions else None
        tools = body.get("tools")
        self.tools = tools if isinstance(tools, list) else []
        truncation = body.get("truncation")
        self.truncation = truncation if isinstance(truncation, str) else "disabled"
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        self.format = fmt if isinstance(fmt, dict) else {"type": "text"}
        self.top_p = self._number("top_p")
        self.temperature = self._number("temperature")
        cap = body.get("max_output_tokens")
        self.max_output_tokens = cap if isinstance(cap, int) else None
        self.background = body.get("background") is True

    def _number(self, key: str) -> float | int:
        value = self.body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _go_number(value)
        return 1

    def whole(self, output: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        """The non-streamed answer, in ``ResponsesResponse``'s field order."""
        now = int(time.time())
        return {
            "id": self.id, "object": "response", "created_at": now, "completed_at": now,
            "status": "completed", "incomplete_details": None, "model": self.model,
            "previous_response_id": None, "instructions": self.instructions,
            "output": output, "error": None, "tools": self.tools, "tool_choice": "auto",
            "truncation": self.truncation, "parallel_tool_calls": True,
            "text": {"format": self.format}, "top_p": self.top_p, "presence_penalty": 0,
            "frequency_penalty": 0, "top_logprobs": 0, "temperature": self.temperature,
            "reasoning": None, "usage": usage, "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None, "store": False, "background": self.background,
            "service_tier": "default", "metadata": {}, "safety_identifier": None,
            "prompt_cache_key": None,
        }  # fmt: skip

    def streamed(
        self, status: str, output: list[Any] | None, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A response object inside an event (a Go map: its keys are sorted when written)."""
        obj = self.whole(output or [], usage)
        obj |= {"status": status, "completed_at": None, "output": output}
        return obj
