"""OpenAI's Responses API on Ollama (``POST /v1/responses``, Ollama 0.13.3 and later): its body.

Ollama decodes the body into Go structs and makes a chat of it: ``instructions`` a
system message, a string ``input`` a user message, each input item a message (its
text parts joined), a function call or its output, or reasoning; ``max_output_tokens``
becomes ``num_predict`` (``max_tokens`` is no field here, and is ignored). The shapes
below name the fields Ollama reads, at every depth, so a field spelled another way
is refused rather than read two ways (see :class:`~._shapes._GoStruct`); what a
field holds beyond its type is Ollama's to refuse.
"""

from __future__ import annotations

from typing import Any

from ollama_meter.gateway._shapes import GoInt, Items, _Body, _GoStruct


class ResponsesPart(_GoStruct):
    """A part of an item's content: ``input_text``, ``output_text``, ``input_image``..."""

    type: str | None = None
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


Content = str | Items[ResponsesPart] | None


class ResponsesItem(_GoStruct):
    """One input item, whatever its type (Ollama decodes each type into its own struct)."""

    type: str | None = None
    role: str | None = None
    content: Content = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: Content = None
    summary: Items[dict[str, Any]] | None = None
    encrypted_content: str | None = None


class ResponsesRequest(_Body):
    operation = "openai.responses"

    input: str | Items[ResponsesItem] | None = None
    instructions: str | None = None
    max_output_tokens: GoInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: Items[dict[str, Any]] | None = None
    truncation: str | None = None
    background: bool | None = None
    include: Items[str] | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
