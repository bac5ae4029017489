"""Structured outputs in two passes: a thinking model's chat with a ``format``, as Ollama runs it.

Ollama runs such a chat first without the format. Once the model has thought and starts to
answer, it cancels that pass and runs the chat again with the format, the thinking written
into the prompt as an assistant message. Only the second pass is reported: its
``prompt_eval_count`` counts the prompt and the thinking, its ``eval_count`` the answer,
which has the reply cap (``num_predict``) to itself. A first pass that thinks up to the cap
without starting to answer is the whole call, reported as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ollama_meter.testing._models import EmulatedModel, ExpectedReply, reply_for_texts


@dataclass(frozen=True)
class SecondPass(ExpectedReply):
    """A reply whose thinking came from a first pass nobody reports: its tokens are counted in
    the prompt (:attr:`prompt_tokens`), not in the reply; it still streams first."""

    @property
    def output_tokens(self) -> int:
        return len(self.pieces) + self.tool_call_tokens


def in_two_passes(
    reply: ExpectedReply,
    model: EmulatedModel,
    texts: Sequence[str],
    options: Mapping[str, Any] | None,
) -> ExpectedReply:
    """``reply`` (a thinking model's, with a ``format`` asked) as Ollama reports it: the
    second pass, when the first started to answer."""
    if not reply.thinking_pieces or not reply.pieces or reply.tool_calls:
        return reply
    answer = reply_for_texts(model, texts, options)  # the same words, the cap its own
    prompt = reply.prompt_tokens + len(reply.thinking_pieces)
    return SecondPass(model, prompt, answer.pieces, answer.done_reason, reply.thinking_pieces)
