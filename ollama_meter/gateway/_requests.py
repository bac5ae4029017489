"""The metered routes' request bodies, checked before anything is metered or forwarded.

Pydantic models of the documented Ollama (``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings``) and OpenAI (``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``; ``/v1/responses``'s in ``_responses.py``)
bodies, built on ``_shapes.py``. They are as strict as Ollama's own decoder on
the fields they name (a string is not a list, ``"true"`` is not a boolean) and
as permissive as the APIs elsewhere: unknown fields pass through untouched, since
the body is forwarded as the client sent it. A body that fails is a
:class:`BadRequest` with one line saying which field and why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError as PydanticError,
)
from pydantic_core import PydanticCustomError

from ollama_meter._names import HOLDS_KEY, holds_key
from ollama_meter.gateway._json import NotJson, read_json
from ollama_meter.gateway._messages import MessagesRequest
from ollama_meter.gateway._responses import ResponsesRequest
from ollama_meter.gateway._shapes import GoInt, Items, _Body, _GoStruct
from ollama_meter.meter._request import RequestFacts, facts_of


class BadRequest(Exception):
    """The body is not a request this route can take; the message says what is wrong."""

    def __init__(self, message: str, *, model: str = "", not_json: bool = False) -> None:
        super().__init__(message)
        self.model = model
        """The model the body names, when it names one (for the refusal's span)."""
        self.not_json = not_json
        """The body is no JSON at all (compressed, say), not JSON of the wrong shape."""


def _texts(value: Any) -> Any:
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return value
    raise PydanticCustomError("texts", "must be a string or a list of strings")


def _openai_input(value: Any) -> Any:
    """OpenAI's prompt/input: text, texts, token ids, or lists of token ids."""
    if _is_texts(value) or _is_ints(value):
        return value
    if isinstance(value, list) and all(_is_ints(item) for item in value):
        return value
    raise PydanticCustomError(
        "openai_input",
        "must be a string, a list of strings, a list of token ids or a list of such lists",
    )


def _is_texts(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _is_ints(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _openai_content(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, dict) for part in value):
        return value
    raise PydanticCustomError("content", "must be a string or a list of content parts (objects)")


Texts = Annotated[Any, AfterValidator(_texts)]
OpenAIInput = Annotated[Any, AfterValidator(_openai_input)]
Format = str | dict[str, Any] | None
KeepAlive = str | int | float | None


# -- Ollama ------------------------------------------------------------------------------


Number = int | float  # Ollama takes any JSON number for an integer option


class OllamaOptions(BaseModel):
    """Ollama's documented model options; Ollama answers 500 for a wrong type, so they are checked."""

    model_config = ConfigDict(strict=True, extra="allow")

    numa: bool | None = None
    num_ctx: Number | None = None
    num_batch: Number | None = None
    num_gpu: Number | None = None
    main_gpu: Number | None = None
    use_mmap: bool | None = None
    num_thread: Number | None = None
    num_keep: Number | None = None
    seed: Number | None = None
    num_predict: Number | None = None
    top_k: Number | None = None
    top_p: Number | None = None
    min_p: Number | None = None
    typical_p: Number | None = None
    repeat_last_n: Number | None = None
    temperature: Number | None = None
    repeat_penalty: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    stop: Items[str] | None = None


class _OllamaBody(_Body):
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None


class OllamaCalledFunction(_GoStruct):
    index: GoInt | None = None
    name: str | None = None
    arguments: Any = None  # an object; Ollama's to refuse when it is not one


class OllamaToolCall(_GoStruct):
    """An earlier tool call, which Ollama decodes into Go structs (keys read in any case)."""

    id: str | None = None
    function: OllamaCalledFunction | None = None


class OllamaMessage(_GoStruct):
    role: str | None = None
    content: str | None = None
    thinking: str | None = None
    images: Items[str] | None = None
    tool_calls: Items[OllamaToolCall] | None = None
    tool_name: str | None = None


class ChatRequest(_OllamaBody):
    operation = "chat"
    renders_for_debug = True
    streams_by_default = True

    messages: Items[OllamaMessage] | None = None
    format: Format = None
    tools: Items[dict[str, Any]] | None = None
    think: bool | str | None = None


class GenerateRequest(_OllamaBody):
    operation = "generate"
    renders_for_debug = True
    streams_by_default = True

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: Items[int] | None = None
    raw: bool | None = None
    format: Format = None
    images: Items[str] | None = None
    think: bool | str | None = None


class EmbedRequest(_OllamaBody):
    operation = "embed"
    can_stream = False

    input: Texts = None
    truncate: bool | None = None
    dimensions: int | None = None


class EmbeddingsRequest(_OllamaBody):
    operation = "embeddings"
    can_stream = False

    prompt: str | None = None


# -- OpenAI ------------------------------------------------------------------------------


class StreamOptions(_GoStruct):
    include_usage: bool | None = None


class OpenAICalledFunction(_GoStruct):
    name: str | None = None
    arguments: str | None = None  # JSON text, which Ollama parses


class OpenAIToolCall(_GoStruct):
    """An earlier tool call. Ollama decodes it into Go structs, whose keys it reads in any
    case, and names each ``tool`` message by the call its ``tool_call_id`` points to: a call
    spelled ``{"ID": ..., "FUNCTION": {"NAME": ...}}`` named a thousand results by a name the
    meter never counted."""

    id: str | None = None
    index: GoInt | None = None
    type: str | None = None
    function: OpenAICalledFunction | None = None


class OpenAIMessage(_GoStruct):
    role: str
    content: Annotated[Any, AfterValidator(_openai_content)] = None
    name: str | None = None
    tool_calls: Items[OpenAIToolCall] | None = None
    tool_call_id: str | None = None


class _OpenAIGeneration(_Body):
    stream_options: StreamOptions | None = None
    max_tokens: GoInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: Texts = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class OpenAIChatRequest(_OpenAIGeneration):
    operation = "openai.chat"
    renders_for_debug = True

    messages: Items[OpenAIMessage]
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: Items[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class OpenAICompletionRequest(_OpenAIGeneration):
    operation = "openai.completions"
    renders_for_debug = True

    prompt: OpenAIInput = None
    suffix: str | None = None
    echo: bool | None = None


class OpenAIEmbeddingRequest(_Body):
    operation = "openai.embeddings"
    can_stream = False

    input: OpenAIInput
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


OLLAMA_ROUTES: dict[str, type[_Body]] = {
    "/api/chat": ChatRequest,
    "/api/generate": GenerateRequest,
    "/api/embed": EmbedRequest,
    "/api/embeddings": EmbeddingsRequest,
}
OPENAI_ROUTES: dict[str, type[_Body]] = {
    "/v1/chat/completions": OpenAIChatRequest,
    "/v1/completions": OpenAICompletionRequest,
    "/v1/embeddings": OpenAIEmbeddingRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/messages": MessagesRequest,
}


def operation_of(path: str) -> str:
    return (OLLAMA_ROUTES.get(path) or OPENAI_ROUTES[path]).operation


@dataclass(frozen=True, slots=True)
class MeteredRequest:
    """A checked request: what the meter needs to know, and the bytes to send upstream."""

    path: str
    operation: str
    model: str
    stream: bool
    body: dict[str, Any]
    """The body as it goes upstream, for the meter to read (``facts_of``)."""
    upstream_body: bytes
    hide_usage: bool
    """True when the gateway asked Ollama for the usage chunk the client did not ask for."""
    facts: RequestFacts
    """What the meter reads of ``body`` (read once, with the body: the rate limits and the
    budgets read the same facts, off the event loop for a large body)."""


def parse_request(path: str, raw: bytes) -> MeteredRequest:
    """Check ``raw`` as a body of ``path``'s documented shape; raises :class:`BadRequest`."""
    shape = OLLAMA_ROUTES.get(path) or OPENAI_ROUTES[path]
    try:
        body = read_json(raw) if raw.strip() else None
    except NotJson as exc:
        raise BadRequest(str(exc), not_json=True) from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "model" in body and body["model"] is not None and not isinstance(body["model"], str):
        got = _json_type(type(body["model"]).__name__)
        raise BadRequest(f"model: input should be a valid string naming a model, got {got}")
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise BadRequest("model is required")
    model = body["model"]
    if holds_key(model):  # its refusal's span names no model: a key is never stored
        raise BadRequest(f"model {HOLDS_KEY}")
    try:
        checked = shape.model_validate(body)
    except PydanticError as exc:
        raise BadRequest(_explain(exc), model=model) from None
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply", model=model) from None
    stream = checked.streamed()
    upstream, hide_usage = raw, False
    if isinstance(checked, _OpenAIGeneration) and stream and not checked.include_usage():
        # Ask for usage so the span has exact counts; the client never sees that chunk.
        options = body.get("stream_options") or {}
        body = {**body, "stream_options": {**options, "include_usage": True}}
        try:
            upstream = json.dumps(body).encode()
        except RecursionError:
            raise BadRequest("the JSON body is nested too deeply", model=model) from None
        hide_usage = True
    return MeteredRequest(
        path=path,
        operation=shape.operation,
        model=model,
        stream=stream,
        body=body,
        upstream_body=upstream,
        hide_usage=hide_usage,
        facts=facts_of(shape.operation, body),
    )


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def _where(loc: tuple[int | str, ...]) -> str:
    # Union members tag the location with their type ("str", "dict[str,any]"): not a field.
    parts = [
        str(part)
        for part in loc
        if isinstance(part, int) or not (part in _UNION_TAGS or "[" in part or "-" in part)
    ]
    return ".".join(parts) or "body"


def _inside(where: str, field: str) -> bool:
    return where == field or where.startswith(f"{field}.")


def _explain(exc: PydanticError) -> str:
    errors = exc.errors(include_url=False)
    field = _where(errors[0]["loc"])
    # Within a field that takes either of two shapes, the shape read furthest says what is
    # wrong: a list of items with a misspelled key, not "should be a valid string".
    first = max(
        (e for e in errors if _inside(_where(e["loc"]), field)), key=lambda e: len(e["loc"])
    )
    where = _where(first["loc"])
    problems = {w for e in errors if not _inside(where, w := _where(e["loc"])) or w == where}
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    if first["type"] == "missing":
        return f"{where} is required{more}"
    if first["type"] in ("field_spelling", "debug_render"):
        return f"{where}: {first['msg']}{more}"
    got = _json_type(type(first.get("input")).__name__)
    if sum(_where(e["loc"]) == where for e in errors) > 1:
        return f"{where}: has the wrong type, got {got}{more}"
    # Say it in JSON's words: an object, not "a valid dictionary or instance of OllamaMessage".
    message = re.sub(r" or instance of \w+", "", first["msg"]).replace("dictionary", "object")
    return f"{where}: {message[:1].lower()}{message[1:]}, got {got}{more}"


def _json_type(python: str) -> str:
    return {
        "str": "a string",
        "int": "a number",
        "float": "a number",
        "bool": "a boolean",
        "list": "a list",
        "dict": "an object",
        "NoneType": "null",
    }.get(python, python)
