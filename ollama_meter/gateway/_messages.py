"""Anthropic's Messages API on Ollama (``POST /v1/messages``, Ollama 0.14 and later): its body.

Ollama decodes the body into Go structs and makes a chat of it: ``system`` (a string,
or text blocks joined) a system message, each message one message of its text blocks
joined (its images, tool calls and thinking beside them), each ``tool_result`` block a
tool message of its own; ``max_tokens`` becomes ``num_predict``. Ollama refuses a body
without a positive ``max_tokens`` or without messages. The gateway refuses a ``max_tokens``
of 0 or less itself, the same with a hard budget or without (it would otherwise send the
budget's reply cap in its place, and run a call Ollama refuses); the rest it leaves to
Ollama (a body with no ``max_tokens`` at all, under a hard budget, is sent
``OMETER_BUDGET_REPLY_CAP``, as on every route). The shapes below name the fields Ollama reads, at every depth, so a
field spelled another way is refused rather than read two ways (see
:class:`~._shapes._GoStruct`).
"""

from __future__ import annotations

from typing import Any

from ollama_meter.gateway._shapes import Items, PositiveGoInt, _Body, _GoStruct
from ollama_meter.upstream._anthropic import MESSAGES


class MessagesBlock(_GoStruct):
    """A content block: ``text``, ``image``, ``tool_use``, ``tool_result``, ``thinking``..."""

    type: str | None = None
    text: str | None = None
    citations: Items[dict[str, Any]] | None = None
    source: dict[str, Any] | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: Any = None  # a tool result's: a string or blocks, read loosely by Ollama
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None


class MessagesMessage(_GoStruct):
    role: str | None = None
    content: str | Items[MessagesBlock] | None = None


class MessagesTool(_GoStruct):
    type: str | None = None
    name: str | None = None
    description: str | None = None
    input_schema: Any = None
    max_uses: int | None = None


class MessagesRequest(_Body):
    operation = MESSAGES

    max_tokens: PositiveGoInt | None = None
    messages: Items[MessagesMessage] | None = None
    system: Any = None  # a string or text blocks; Ollama ignores anything else
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: Items[str] | None = None
    tools: Items[MessagesTool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
