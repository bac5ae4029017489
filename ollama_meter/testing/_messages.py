"""Ollama's Anthropic Messages route, ``POST /v1/messages`` (Ollama 0.14 and later).

Ollama refuses a body without a model, without a positive ``max_tokens`` or without
messages, turns the rest into a chat (``system`` a system message, each message its
text blocks joined, each ``tool_result`` a tool message; ``max_tokens`` its
``num_predict``) and its answer into a Messages object: a whole one, or server-sent
events (``event:`` and ``data:`` lines, no ``[DONE]``). ``message_start`` carries an
input count estimated from the request's length (a quarter of its characters), the
count the chat took arrives in ``message_delta``; a stream that breaks simply ends
without ``message_stop``. Its errors are Anthropic's error objects.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ollama_meter.testing._faults import WILD_COUNT, WILD_REPLY, Fault, early
from ollama_meter.testing._models import reply_for_texts
from ollama_meter.testing._openai import _openai_calls
from ollama_meter.testing._responses import ResponsesRoutes, offered_tools
from ollama_meter.testing._wire import Refusal, decode_body, go_json, model_field, unmarshal_error

GO_TYPE = "anthropic.MessagesRequest"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "overloaded_error"}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + go_json({"type": kind, **data}) + b"\n\n"


def _block_texts(content: object, where: str) -> list[str]:
    """A message's texts as Ollama's converter reads them: its text blocks joined, each
    tool result a text of its own."""
    if isinstance(content, str) or content is None:
        return [content or ""]
    if not isinstance(content, list):
        raise Refusal(400, unmarshal_error(content, f"{where}.content", "[]anthropic.ContentBlock"))
    joined, results = "", []
    for block in content:
        if not isinstance(block, dict):
            continue
        _refused(block)
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            joined += block["text"]
        elif block.get("type") == "tool_result":
            inner = block.get("content")
            results.append(inner if isinstance(inner, str) else "")
    return [*results, joined] if joined else results


def _refused(block: dict[str, Any]) -> None:
    """What Ollama's converter refuses of a block: an image it cannot decode, a tool call
    without its id or name."""
    kind = block.get("type")
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            raise Refusal(400, "invalid image source")
        if source.get("type") != "base64":
            message = f"invalid image source type: {source.get('type') or ''}. Only base64 images are supported."  # fmt: skip
            raise Refusal(400, message)
        try:
            base64.b64decode(str(source.get("data") or ""), validate=True)
        except binascii.Error as exc:
            raise Refusal(400, f"invalid base64 image data: {exc}") from None
    elif kind == "tool_use":
        for field in ("id", "name"):
            if not block.get(field):
                raise Refusal(400, f"tool_use block missing required '{field}' field")


def request_texts(body: dict[str, Any]) -> list[str]:
    """The chat message texts Ollama makes of a Messages request, in order."""
    texts: list[str] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        texts.append(system)
    elif isinstance(system, list):
        joined = "".join(
            b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
        texts += [joined] if joined else []
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refusal(400, "messages is required")
    for message in messages:
        where = "MessagesRequest.messages"
        texts += _block_texts(message.get("content") if isinstance(message, dict) else None, where)
    return texts


class MessagesRoutes(ResponsesRoutes):
    def _anthropic_error(self, status: int, message: str) -> None:
        kind = _ERROR_TYPES.get(status, "api_error")
        error = {"type": "error", "error": {"type": kind, "message": message}}
        self._send_json(status, error, newline=True)

    def _anthropic_messages(self, raw: bytes) -> None:
        emu = self.emulator
        try:
            body = decode_body(raw, GO_TYPE)
            cap = body.get("max_tokens")
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
                raise Refusal(400, unmarshal_error(cap, "MessagesRequest.max_tokens", "int"))
            name = model_field(body, GO_TYPE)
            if not cap or cap <= 0:
                raise Refusal(400, "max_tokens is required and must be positive")
            texts = request_texts(body)
            model = self._lookup(name)
            if model.embedding:
                raise Refusal(400, f"{json.dumps(name)} does not support chat")
        except Refusal as exc:
            self._anthropic_error(exc.status, exc.message)
            return
        stream = body.get("stream") is True
        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        if fault is Fault.ERROR_DONE:
            fault = Fault.MIDSTREAM_ERROR
        if self.instead(early(fault, generating=True, streaming=stream), self._anthropic_error):
            return
        options = None if fault is Fault.IGNORE_CAP else {"num_predict": cap}
        tools = offered_tools(body.get("tools"), "input_schema") if _wants_tool(body) else None
        reply = reply_for_texts(model, texts, options, tools=tools)
        emu._warm(model)
        counted = fault is not Fault.OMIT_COUNTS
        input_tokens = reply.prompt_tokens if counted else 0
        output_tokens = reply.output_tokens if counted else 0
        if fault is Fault.INFLATE_COUNTS:
            input_tokens = WILD_COUNT
        elif fault is Fault.INFLATE_REPLY:
            output_tokens = WILD_REPLY
        stop = "max_tokens" if reply.done_reason == "length" else "end_turn"
        message_id = f"msg_{emu._next_completion_id()}"
        calls = [_tool_use(call) for call in _openai_calls(reply.tool_calls, message_id)]
        stop = "tool_use" if calls else stop
        if not stream:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            content = [{"type": "text", "text": reply.content}] if reply.content else []
            whole = {
                "id": message_id, "type": "message", "role": "assistant", "model": name,
                "content": [*content, *calls] or None,
                "stop_reason": stop,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }  # fmt: skip
            self._send_json(200, whole, newline=True)
            return

        estimate = max(1, sum(len(t) for t in texts) // 4)
        started = {"message": False, "text": False}
        at = {"index": 0}  # the content block being written

        def opening() -> bytes:
            if started["message"]:
                return b""
            started["message"] = True
            message: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant"}
            message["model"] = name
            message |= {"content": [], "usage": {"input_tokens": estimate, "output_tokens": 0}}
            return _event("message_start", {"message": message})

        def piece(delta: str | dict[str, Any]) -> bytes:
            out = opening()
            if isinstance(delta, dict):  # a tool call: its block whole, its input in one piece
                if started["text"]:
                    started["text"] = False
                    out += _event("content_block_stop", {"index": at["index"]})
                    at["index"] += 1
                where = {"index": at["index"]}
                block = {**delta, "input": {}}
                out += _event("content_block_start", {**where, "content_block": block})
                written = go_json(delta["input"]).decode()
                piece = {"type": "input_json_delta", "partial_json": written}
                out += _event("content_block_delta", {**where, "delta": piece})
                at["index"] += 1
                return out + _event("content_block_stop", where)
            if not started["text"]:
                started["text"] = True
                block = {"type": "text", "text": ""}
                out += _event("content_block_start", {**at, "content_block": block})
            delta_obj = {"type": "text_delta", "text": delta}
            return out + _event("content_block_delta", {**at, "delta": delta_obj})

        def ending() -> list[bytes]:
            out = opening()
            if started["text"]:
                out += _event("content_block_stop", {**at})
            usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
            out += _event("message_delta", {"delta": {"stop_reason": stop}, "usage": usage})
            return [out + _event("message_stop", {})]

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


def _wants_tool(body: dict[str, Any]) -> bool:
    """A chat offered tools calls one unless its last message is a tool's result: the last
    message's blocks are tool results only."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    kinds = (
        {b.get("type") for b in content if isinstance(b, dict)}
        if isinstance(content, list)
        else set()
    )
    return kinds != {"tool_result"}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped call of Ollama's as Anthropic's ``tool_use`` block."""
    function = call["function"]
    return {"type": "tool_use", "id": call["id"], "name": function["name"],
            "input": json.loads(function["arguments"])}  # fmt: skip
