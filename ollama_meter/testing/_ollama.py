"""Ollama's native routes: ``/api/show``, ``/api/chat``, ``/api/generate``, ``/api/embed[dings]``.

Field order, ``omitempty`` and error bodies follow Ollama's Go structs. Replies
come from ``_models``; faults decide what is sent instead (``_faults``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ollama_meter.testing._faults import (
    SMALL_COUNT,
    WILD_COUNT,
    WILD_REPLY,
    Armed,
    Fault,
    early,
)
from ollama_meter.testing._http import Handler
from ollama_meter.testing._models import (
    EmulatedModel,
    count_tokens,
    expected_embedding,
    generate_texts,
    message_texts,
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
    context_tokens,
    decode_body,
    embed_inputs,
    go_json,
    keep_alive_ns,
    model_field,
    options,
    rfc3339_nano,
    unmarshal_error,
)


class OllamaRoutes(Handler):
    def _ollama_error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _blob(self, digest: str, raw: bytes) -> None:
        """``HEAD /api/blobs/{digest}`` (200 or 404) and ``POST`` (201, or 400 for a digest
        that is not ``sha256:<64 hex>`` or not the body's), as Ollama answers them."""
        if not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest):
            self._ollama_error(400, "invalid digest format")
            return
        digest = digest.replace("-", ":", 1)
        if self._head:
            if digest in self.emulator.blobs:
                self._send_text(200, "")
            else:
                self._ollama_error(404, f"blob {json.dumps(digest)} not found")
            return
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != digest:
            self._ollama_error(
                400, f"digest mismatch, expected {json.dumps(digest)}, got {json.dumps(got)}"
            )
            return
        self.emulator._keep_blob(digest, len(raw))
        self._send(201, b"", "text/plain; charset=utf-8")

    def _show(self, raw: bytes) -> None:
        try:
            body = decode_body(raw, "api.ShowRequest")
            name = body.get("model") or body.get("name")
            if not isinstance(name, str) or not name:
                raise Refusal(400, "model is required")
            model = find_model(self.emulator.models, name)
            if model is None:
                raise Refusal(404, f"model '{name}' not found")
        except Refusal as exc:
            self._ollama_error(exc.status, exc.message)
            return
        self._send_json(200, self.emulator._show(model))

    def _chat(self, raw: bytes) -> None:
        def texts(body: dict[str, Any]) -> list[str]:
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise Refusal(
                    400, unmarshal_error(messages, "ChatRequest.messages", "[]api.Message")
                )
            for message in messages:
                if not isinstance(message, dict):
                    raise Refusal(
                        400, unmarshal_error(message, "ChatRequest.messages", "api.Message")
                    )
            return message_texts(messages)

        self._text_call(raw, "chat", "api.ChatRequest", texts)

    def _generate(self, raw: bytes) -> None:
        def texts(body: dict[str, Any]) -> list[str]:
            prompt = body.get("prompt") or ""
            system = body.get("system") or None
            if not isinstance(prompt, str):
                raise Refusal(400, unmarshal_error(prompt, "GenerateRequest.prompt", "string"))
            if system is not None and not isinstance(system, str):
                raise Refusal(400, unmarshal_error(system, "GenerateRequest.system", "string"))
            template = body.get("template")
            if prompt and isinstance(template, str) and template and not body.get("raw"):
                return [_rendered(template, body)]
            return generate_texts(prompt, system) if prompt else []

        self._text_call(raw, "generate", "api.GenerateRequest", texts)

    def _text_call(
        self,
        raw: bytes,
        kind: str,
        schema: str,
        texts_of: Callable[[dict[str, Any]], list[str]],
    ) -> None:
        """A chat or generate call: checked as Ollama checks it, then answered.

        ``texts_of`` checks the kind's own fields and returns the prompt's texts
        (none: the call only loads or unloads the model).
        """
        try:
            body = decode_body(raw, schema)
            keep_alive = keep_alive_ns(body)  # read as the body is decoded, before the model
            name = model_field(body, schema)
            model = self._lookup(name)
            texts = texts_of(body)
            if texts and model.system and not _says_system(kind, body):
                texts = [model.system, *texts]  # as Ollama templates a Modelfile's SYSTEM in
            unload = not texts and keep_alive == 0
            think = body.get("think")
            if not unload and not model.thinking and (think is True or isinstance(think, str)):
                raise Refusal(400, f"{json.dumps(name)} does not support thinking")
            if model.embedding:
                raise Refusal(400, f"{json.dumps(name)} does not support {kind}")
            given = options(body)
            late = None
            if texts:  # the runner reads these only for a call that evaluates
                check_images(_images(kind, body))
                late = _late_format(kind, body, thinks(model, think))
        except Refusal as exc:
            self._ollama_error(exc.status, exc.message)
            return
        messages = body.get("messages")
        tools = body.get("tools")
        asked = kind == "chat" and isinstance(tools, list) and bool(tools)
        offered = tools if asked and wants_tool(messages or []) else None
        self._complete(
            kind=kind,
            name=name,
            model=model,
            texts=texts,
            options=given,
            stream=body.get("stream") is not False,
            load_only=not texts,
            unload=unload,
            raw_mode=kind == "generate" and bool(body.get("raw")),
            think=thinks(model, think),
            tools=offered,
            late=late,
            passes=2 if kind == "chat" and "format" in body and thinks(model, think) else 1,
        )

    def _complete(
        self,
        *,
        kind: str,
        name: str,
        model: EmulatedModel,
        texts: list[str],
        options: Mapping[str, Any] | None,
        stream: bool,
        load_only: bool,
        unload: bool,
        raw_mode: bool = False,
        think: bool = False,
        tools: list[Any] | None = None,
        late: Refusal | None = None,
        passes: int = 1,
    ) -> None:
        """``late``: the refusal a stream ends with once its thinking is sent (:func:`_late_format`);
        ``passes``: 2 for a chat Ollama may run twice (:func:`in_two_passes`)."""
        began = time.monotonic_ns()  # the durations it reports are timed from here
        emu = self.emulator
        armed = emu._take_fault(model)
        fault = armed.fault if armed else None
        streaming = stream and not load_only
        outcome = early(fault, generating=True, streaming=streaming)
        if self.instead(outcome, self._ollama_error):
            return

        def envelope(
            piece: str | None, thought: str = "", calls: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
            # Field order and omitempty as Ollama's Message and GenerateResponse have them.
            head: dict[str, Any] = {"model": name, "created_at": rfc3339_nano()}
            if kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": piece or ""}
                if thought:
                    message["thinking"] = thought
                if calls:
                    message["tool_calls"] = calls
                head["message"] = message
            else:
                head["response"] = piece or ""
                if thought:
                    head["thinking"] = thought
            return head

        if load_only:
            if unload:
                emu._unload(model)
            else:
                emu._warm(model)
            done = envelope(None)
            reason = "unload" if unload else "load"
            if kind == "chat":
                done.update({"done_reason": reason, "done": True})
            else:
                done.update({"done": True, "done_reason": reason})
            self._send_json(200, done)
            return

        reply = reply_for_texts(
            model,
            texts,
            None if fault is Fault.IGNORE_CAP else options,
            think=think,
            tools=tools,
        )
        if passes == 2 and late is None:
            reply = in_two_passes(
                reply, model, texts, None if fault is Fault.IGNORE_CAP else options
            )
        cold = emu._warm(model)
        final = envelope(None)
        metrics = reply.metrics(cold=cold)
        if fault is Fault.OMIT_COUNTS:
            metrics.pop("prompt_eval_count", None)
            metrics.pop("eval_count", None)
        elif fault is Fault.INFLATE_COUNTS:
            metrics.update(prompt_eval_count=WILD_COUNT, prompt_eval_duration=WILD_COUNT)
        elif fault is Fault.INFLATE_REPLY:
            metrics.update(eval_count=WILD_REPLY)
        elif fault is Fault.UNDERCOUNT:
            metrics.update(prompt_eval_count=SMALL_COUNT, eval_count=SMALL_COUNT)
        if kind == "chat":
            final.update({"done_reason": reply.done_reason, "done": True})
        else:
            final.update({"done": True, "done_reason": reply.done_reason})
            if not raw_mode:
                final["context"] = context_tokens(texts, reply)
        final.update(metrics)

        if fault is Fault.ERROR_DONE:
            final = envelope(None)
            final.update({"done": True, "done_reason": "error", "error": ERROR_MIDSTREAM})
        worked = reply.worked_ns(cold=cold)
        if not streaming:
            self._pause(emu.latency + emu.token_latency * reply.output_tokens)
            self._spend(began, worked[-1])
            final["created_at"] = rfc3339_nano()
            if fault is not Fault.ERROR_DONE:
                whole = envelope(reply.content, reply.thinking, list(reply.tool_calls))
                final = {**whole, **{k: v for k, v in final.items() if k not in whole}}
            self._send_json(200, final)
            return

        def ending() -> list[bytes]:
            final["created_at"] = rfc3339_nano()
            return [go_json(final) + b"\n"]

        # Thinking streams first, a token a chunk; a tool call comes whole, in one chunk.
        chunks: list[dict[str, Any]] = [envelope(None, piece) for piece in reply.thinking_pieces]
        chunks += [envelope(piece) for piece in reply.pieces]
        if reply.tool_calls:
            chunks.append(envelope(None, calls=list(reply.tool_calls)))
        cut = (len(reply.thinking_pieces), Fault.MIDSTREAM_ERROR) if late else None
        self.stream(
            "application/x-ndjson",
            chunks,
            lambda chunk: go_json({**chunk, "created_at": rfc3339_nano(), "done": False}) + b"\n",
            limit=cut[0] if cut else armed.cut_after if armed else None,
            cut=cut[1] if cut else fault,
            error=go_json({"error": late.message if late else ERROR_MIDSTREAM}) + b"\n",
            ending=ending,
            work=lambda index: self._spend(began, worked[index], streaming=True),
        )

    def _embed_request(
        self, raw: bytes, key: str, go_type: str
    ) -> tuple[str, EmulatedModel, list[str], Armed | None] | None:
        """The request's model and inputs and the fault it takes; None when already answered."""
        try:
            body = decode_body(raw, go_type)
            keep_alive_ns(body)
            inputs = embed_inputs(body, key)
            name = model_field(body, go_type)
            model = self._lookup(name, scheduled=True)
        except Refusal as exc:
            self._ollama_error(exc.status, exc.message)
            return None
        armed = self.emulator._take_fault(model)
        fault = armed.fault if armed else None
        outcome = early(fault, generating=False, streaming=False)
        if self.instead(outcome, self._ollama_error):
            return None
        return name, model, inputs, armed

    def _embed(self, raw: bytes) -> None:
        began = time.monotonic_ns()  # the durations it reports are timed from here
        request = self._embed_request(raw, "input", "api.EmbedRequest")
        if request is None:
            return
        name, model, inputs, armed = request
        body = json.loads(raw)
        dimensions = body.get("dimensions")
        dimensions = dimensions if type(dimensions) is int else None
        # An input longer than the context is cut to it, unless the request says not to.
        room = max(model.context_length - model.template_tokens, 0)
        if body.get("truncate") is False and any(count_tokens(t) > room for t in inputs):
            self._ollama_error(400, "the input length exceeds the context length")
            return
        inputs = [" ".join(t.split()[:room]) if count_tokens(t) > room else t for t in inputs]
        self._pause(self.emulator.latency)
        cold = self.emulator._warm(model)
        out: dict[str, Any] = {"model": name, "embeddings": []}
        if not inputs:  # the model is loaded, nothing embedded (Embeddings is not omitempty)
            self._send_json(200, out)
            return
        # Each input is tokenized on its own, with what the model adds to every prompt.
        tokens = sum(count_tokens(text) + model.template_tokens for text in inputs)
        load = model.load_ns if cold else model.warm_load_ns
        prompt_ns = tokens * model.prompt_ns_per_token
        out["embeddings"] = [
            expected_embedding(model, text, dimensions=dimensions, models=self.emulator.models)
            for text in inputs
        ]
        self._spend(began, load + prompt_ns + model.overhead_ns)
        metrics = {
            "total_duration": load + prompt_ns + model.overhead_ns,
            "load_duration": load,
            "prompt_eval_count": 0 if armed and armed.fault is Fault.OMIT_COUNTS else tokens,
        }
        out.update({k: v for k, v in metrics.items() if v})
        self._send_json(200, out)

    def _embeddings(self, raw: bytes) -> None:
        request = self._embed_request(raw, "prompt", "api.EmbeddingRequest")
        if request is None:
            return
        _, model, inputs, _ = request
        self._pause(self.emulator.latency)
        self.emulator._warm(model)
        vector = expected_embedding(model, inputs[0], models=self.emulator.models) if inputs else []
        self._send_json(200, {"embedding": vector})


def _says_system(kind: str, body: dict[str, Any]) -> bool:
    """The request's own system prompt, which Ollama sends instead of the model's (raw: none)."""
    if kind == "generate":
        return bool(body.get("system")) or bool(body.get("raw"))
    messages = body.get("messages") or [{}]
    return isinstance(messages[0], dict) and messages[0].get("role") == "system"


_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_PRINTED = {".Prompt": "prompt", ".System": "system", ".Suffix": "suffix"}


def _rendered(template: str, body: dict[str, Any]) -> str:
    """A generate's own ``template`` as Ollama writes the prompt of it, for the actions that
    print the request's texts (``{{ .Prompt }}``, however often); any other action writes
    nothing here, both branches of an ``if`` are kept."""

    def value(action: re.Match[str]) -> str:
        field = _PRINTED.get(action.group(1))
        text = body.get(field) if field else None
        return text if isinstance(text, str) else ""

    rendered = _ACTION.sub(value, template)
    if "{{" in rendered:  # Go's parser, in Ollama's words (a 500)
        raise Refusal(500, "template: :1: unclosed action")
    return rendered


def _late_format(kind: str, body: dict[str, Any], thinking: bool) -> Refusal | None:
    """A ``format`` the runner refuses (a 500 before the answer), or, for a thinking model's
    streamed chat, the refusal its stream ends with after the thinking: Ollama first runs the
    chat without the format, and asks the runner for its grammar only once the thinking is
    done (structured outputs in two passes), when the 200 and the thinking are sent."""
    try:
        check_format(body.get("format"))
    except Refusal as refused:
        if kind == "chat" and thinking and body.get("stream") is not False:
            return refused
        raise
    return None


def _images(kind: str, body: dict[str, Any]) -> list[object]:
    """Every image a native request sends: a generate's, or each chat message's (a chat has
    no ``images`` of its own: Go's decoder skips the field, whatever it holds)."""
    if kind != "chat":
        return [*(body.get("images") or [])]
    messages = body.get("messages")
    return [
        image
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict)
        for image in (message.get("images") or [])
    ]
