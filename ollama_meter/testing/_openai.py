"""Ollama's OpenAI-compatible routes: chat and text completions, and embeddings, under ``/v1``.

The shapes Ollama's OpenAI layer writes (chunk field order, ``system_fingerprint``,
SSE framing with ``data: [DONE]``, the usage chunk when asked), and its errors
as OpenAI error objects. A chat thinks and calls tools as ``/api/chat`` does, written as
Ollama's OpenAI layer writes them: the thinking in ``reasoning`` (a chunk of its own), a
tool call whole in one chunk (``id``, ``index``, ``arguments`` as a JSON string) and the
finish reason ``tool_calls``. With ``stream_options.include_usage``, a text completion's
every chunk carries a zero ``usage`` (Ollama's ``CompleteWriter`` sets it on each) before the
usage chunk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Callable
from typing import Any

from ollama_meter.testing._faults import SMALL_COUNT, WILD_COUNT, WILD_REPLY, Fault, early
from ollama_meter.testing._http import Handler
from ollama_meter.testing._models import (
    EmulatedModel,
    count_tokens,
    expected_embedding,
    reply_for_texts,
    thinks,
    wants_tool,
)
from ollama_meter.testing._names import find_model
from ollama_meter.testing._passes import in_two_passes
from ollama_meter.testing._wire import (
    ERROR_MIDSTREAM,
    Refusal,
    check_format,
    check_images,
    decode_body,
    embed_inputs,
    go_json,
    model_field,
    modified_at,
    openai_texts,
    unmarshal_error,
)


def _event(obj: object) -> bytes:
    return b"data: " + go_json(obj) + b"\n\n"


_EFFORTS = ("high", "medium", "low", "none")


def _think(body: dict[str, Any]) -> bool | str | None:
    """What a chat's ``reasoning.effort`` (else ``reasoning_effort``) asks of ``think``:
    None (the model's default), False for ``none``, else the level; Ollama refuses others."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    fields = (
        (effort, "Reasoning.effort"),
        (body.get("reasoning_effort"), "ChatCompletionRequest.reasoning_effort"),
    )
    for value, field in fields:
        if value is not None and not isinstance(value, str):  # Go's decoder refuses it
            raise Refusal(400, unmarshal_error(value, field, "string"))
    effort = effort or body.get("reasoning_effort") or ""
    if not effort:
        return None
    if effort not in _EFFORTS:
        allowed = '"high", "medium", "low", or "none"'
        raise Refusal(400, f"invalid reasoning value: '{effort}' (must be {allowed})")
    return False if effort == "none" else str(effort)


def _response_format(body: dict[str, Any]) -> Any:
    """The ``format`` a chat's ``response_format`` asks Ollama for: ``"json"`` for a
    ``json_object``, a ``json_schema``'s ``schema`` as it is, else none."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        field = "ChatCompletionRequest.response_format"
        raise Refusal(400, unmarshal_error(value, field, "openai.ResponseFormat"))
    kind = value.get("type")
    if kind is not None and not isinstance(kind, str):
        raise Refusal(
            400, unmarshal_error(kind, "ChatCompletionRequest.response_format.type", "string")
        )
    kind = (kind or "").strip().lower()
    if kind == "json_object":
        return "json"
    schema = value.get("json_schema")
    if kind == "json_schema" and isinstance(schema, dict):
        return schema.get("schema")
    return None


def _late_format(
    response_format: Any, stream: bool, model: EmulatedModel, think: bool | str | None
) -> Refusal | None:
    """A ``format`` the runner refuses (a 500), or, for a thinking model's streamed chat, the
    refusal that comes after the thinking (Ollama reads the format in a second pass). Ollama's
    OpenAI layer writes that error line, inside the 200, as an empty chunk: the stream ends
    there, with no ``[DONE]`` and no word of why."""
    try:
        check_format(response_format)
    except Refusal as refused:
        if stream and thinks(model, think):
            return refused
        raise
    return None


def _openai_calls(calls: tuple[dict[str, Any], ...], seed: str) -> list[dict[str, Any]]:
    """Tool calls as Ollama's OpenAI layer writes them: an id, the call's index, the
    arguments as a JSON string."""
    written = []
    for index, call in enumerate(calls):
        function = call["function"]
        digest = hashlib.sha256(f"{seed}\0{index}".encode()).hexdigest()[:8]
        arguments = go_json(function["arguments"]).decode()
        written.append(
            {
                "id": f"call_{digest}",
                "index": index,
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return written


def _base64(vector: list[float]) -> str:
    """A vector as Ollama writes it for ``encoding_format: base64``: its float32s, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _encoding_format(body: dict[str, Any]) -> Callable[[list[float]], Any]:
    """How an embeddings answer writes each vector: as numbers, or (``base64``, in any case,
    the official OpenAI client's default) as a base64 string; Ollama refuses other formats."""
    value = body.get("encoding_format")
    if value is not None and not isinstance(value, str):
        field = "EmbedRequest.encoding_format"
        raise Refusal(400, unmarshal_error(value, field, "string"))
    if not value or value.lower() == "float":
        return list
    if value.lower() == "base64":
        return _base64
    supported = "Supported values: ['float', 'base64']."
    raise Refusal(400, f"Invalid value for 'encoding_format' = {value}. {supported}")


class OpenAIRoutes(Handler):
    def _openai_error(self, status: int, message: str) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        self._send_json(
            status,
            {"error": {"message": message, "type": kind, "param": None, "code": None}},
            newline=True,
        )

    def _openai_chat(self, raw: bytes) -> None:
        self._openai_generation(raw, chat=True)

    def _openai_completions(self, raw: bytes) -> None:
        self._openai_generation(raw, chat=False)

    def _openai_generation(self, raw: bytes, *, chat: bool) -> None:
        """``/v1/chat/completions`` (``chat``) or ``/v1/completions``: same flow, two shapes."""
        emu = self.emulator
        go_type = "openai.ChatCompletionRequest" if chat else "openai.CompletionRequest"
        try:
            body = decode_body(raw, go_type)
            think: bool | str | None = None
            response_format: Any = None
            messages: list[Any] = []
            images: list[bytes] = []
            if chat:
                messages = body.get("messages") or []
                if not isinstance(messages, list) or not messages:
                    raise Refusal(400, "[] is too short - 'messages'")
                texts, images = openai_texts(messages)
                think = _think(body)
                response_format = _response_format(body)
            else:
                prompt = body.get("prompt", "")
                if not isinstance(prompt, str):
                    raise Refusal(400, "prompt must be a string")
                texts = [prompt]
            name = model_field(body, go_type)
            model = self._lookup(name)
            if model.embedding:
                what = "chat" if chat else "generate"
                raise Refusal(400, f"{json.dumps(name)} does not support {what}")
            if not model.thinking and think:
                raise Refusal(400, f"{json.dumps(name)} does not support thinking")
            late = None
            if chat:  # the runner's own refusals, a 500 (the chat handler's, dressed by the layer)
                check_images(images)
                late = _late_format(response_format, body.get("stream") is True, model, think)
            options: dict[str, Any] = {}
            max_tokens = body.get("max_tokens")
            if isinstance(max_tokens, int | float) and not isinstance(max_tokens, bool):
                options["num_predict"] = int(max_tokens)
        except Refusal as exc:
            self._openai_error(exc.status, exc.message)
            return
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )

        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        if fault is Fault.ERROR_DONE:  # no such ending on /v1: a mid-stream error stands in
            fault = Fault.MIDSTREAM_ERROR
        outcome = early(fault, generating=True, streaming=stream)
        if self.instead(outcome, self._openai_error):
            return

        tools = body.get("tools") if chat else None
        offered = tools if isinstance(tools, list) and tools and wants_tool(messages) else None
        reply = reply_for_texts(
            model,
            texts,
            None if fault is Fault.IGNORE_CAP else options,
            think=thinks(model, think),
            tools=offered,
        )
        if chat and response_format is not None and thinks(model, think) and late is None:
            capped = None if fault is Fault.IGNORE_CAP else options
            reply = in_two_passes(reply, model, texts, capped)
        emu._warm(model)
        counted = fault is not Fault.OMIT_COUNTS
        prompt_tokens = reply.prompt_tokens if counted else 0
        output_tokens = reply.output_tokens if counted else 0
        if fault is Fault.UNDERCOUNT:
            prompt_tokens = output_tokens = SMALL_COUNT
        elif fault is Fault.INFLATE_COUNTS:
            prompt_tokens = WILD_COUNT
        elif fault is Fault.INFLATE_REPLY:
            output_tokens = WILD_REPLY
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        }
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{emu._next_completion_id()}"
        created = int(time.time())
        calls = _openai_calls(reply.tool_calls, ident)
        finish_reason = "tool_calls" if calls else reply.done_reason

        def choice(
            content: str,
            finish: str | None,
            key: str,
            thought: str = "",
            called: list[dict[str, Any]] | None = None,
        ) -> dict[str, Any]:
            if not chat:
                return {"text": content, "index": 0, "finish_reason": finish}
            # Field order and omitempty as Ollama's openai.Message has them.
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thought:
                message["reasoning"] = thought
            if called:
                message["tool_calls"] = called
            return {"index": 0, key: message, "finish_reason": finish}

        if not stream:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            completion = {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [choice(reply.content, finish_reason, "message", reply.thinking, calls)],
                "usage": usage,
            }
            if fault is Fault.NO_USAGE:
                del completion["usage"]
            self._send_json(200, completion, newline=True)
            return

        def chunk(
            content: str,
            finish: str | None,
            thought: str = "",
            called: list[dict[str, Any]] | None = None,
        ) -> dict[str, Any]:
            if not chat:  # Ollama's CompletionChunk puts choices before model
                written = {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "choices": [choice(content, finish, "delta")],
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                }
                if include_usage:  # a zero usage on every chunk, as Ollama writes it
                    written["usage"] = dict.fromkeys(usage, 0)
                return written
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [choice(content, finish, "delta", thought, called)],
            }

        # Thinking streams first, a token a chunk; a tool call comes whole, in one chunk.
        pieces: list[dict[str, Any]] = [chunk("", None, t) for t in reply.thinking_pieces]
        pieces += [chunk(piece, None) for piece in reply.pieces]
        if calls:
            pieces.append(chunk("", None, called=calls))

        def ending() -> list[bytes]:
            last = chunk("", finish_reason)
            chunks = [_event(last)]
            if include_usage and fault is not Fault.NO_USAGE:
                last["choices"] = []
                last["usage"] = usage
                chunks.append(_event(last))
            return [*chunks, b"data: [DONE]\n\n"]

        error = {"message": ERROR_MIDSTREAM, "type": "api_error", "param": None, "code": None}
        limit = armed.cut_after if armed else None
        said: dict[str, Any] = {"error": error}
        if late:  # the layer reads the error line as an empty chunk, and the body ends there
            limit, fault, said = len(reply.thinking_pieces), Fault.MIDSTREAM_ERROR, chunk("", None)
        self.stream(
            "text/event-stream",
            pieces,
            _event,
            limit=limit,
            cut=fault,
            error=_event(said),
            ending=ending,
        )

    def _openai_model(self, name: str, raw: bytes) -> None:
        """``GET /v1/models/{model}``: Ollama shows the model, and says "not found" as OpenAI's
        error object with the status its show handler gave."""
        found = find_model(self.emulator.models, name)
        if found is None:
            error = {"message": f"model '{name}' not found", "type": "api_error"}
            self._send_json(404, {"error": {**error, "param": None, "code": None}}, newline=True)
            return
        index = self.emulator.models.index(found)
        self._send_json(
            200,
            {
                "id": name,
                "object": "model",
                "created": int(modified_at(index).timestamp()),
                "owned_by": "library",
            },
            newline=True,
        )

    def _openai_embeddings(self, raw: bytes) -> None:
        try:
            body = decode_body(raw, "openai.EmbedRequest")
            encoding = _encoding_format(body)
            value = body.get("input")
            if value == "" or value is None or value == []:
                raise Refusal(400, "invalid input")
            inputs = embed_inputs(body, "input")
            name = model_field(body, "openai.EmbedRequest")
            model = self._lookup(name, scheduled=True)
        except Refusal as exc:
            self._openai_error(exc.status, exc.message)
            return
        armed = self.emulator._take_fault(model)
        fault = armed.fault if armed else None
        outcome = early(fault, generating=False, streaming=False)
        if self.instead(outcome, self._openai_error):
            return
        self._pause(self.emulator.latency)
        self.emulator._warm(model)
        tokens = 0 if fault is Fault.OMIT_COUNTS else sum(count_tokens(t) for t in inputs)
        dimensions = body.get("dimensions")
        dimensions = dimensions if type(dimensions) is int else None
        data = [
            {
                "object": "embedding",
                "embedding": encoding(
                    expected_embedding(
                        model, text, dimensions=dimensions, models=self.emulator.models
                    )
                ),
                "index": index,
            }
            for index, text in enumerate(inputs)
        ]
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            newline=True,
        )
