"""The meter's words for what an upstream answered, whatever the wire format.

The meter understands three things and nothing else:

- :class:`Delta`: a piece of the reply as it arrived. Its text may be empty (a
  chunk with no text still shows that the answer has begun; one with thinking or
  tool calls, and no text, is still generated output);
- :class:`Final`: the call's usage record: token counts, Ollama's own durations,
  the model that answered and why it stopped. Counts the upstream did not give
  are None, and the meter estimates them;
- an :class:`~ollama_meter.errors.UpstreamError`: the answer itself reports a failure.

The adapters in ``_wire.py`` read Ollama's native objects and OpenAI's into these;
no client library's types reach the meter. This module imports nothing but the
error tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ollama_meter.errors import UpstreamError


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply, as it arrived."""

    text: str = ""
    other_output: bool = False
    """The piece carries output the reply text does not show (thinking, tool calls): it
    was generated, so it counts as a token of the reply like a piece of text does."""
    other_chars: int = 0
    """How long that other output is, in characters (the thinking's text, each tool call's
    name and arguments as JSON): what a whole reply Ollama did not count is estimated from,
    with its text."""
    call_chars: int = 0
    """Of those, the tool calls': a call comes whole in one piece, however many tokens the
    model wrote for it, so a stream Ollama did not count estimates it from its length."""
    calls: object = field(default=None, compare=False, repr=False)
    """The piece's tool calls as the wire gave them (a reference: :func:`~._called.tool_calls`
    reads them only where content is captured)."""

    @property
    def generated(self) -> bool:
        """Whether the piece is output the model generated (at least one token)."""
        return bool(self.text) or self.other_output


@dataclass(frozen=True, slots=True)
class Final:
    """What the upstream said about the whole call, once it was done."""

    model: str | None = None
    done_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_ns: int | None = None
    load_ns: int | None = None
    prompt_eval_ns: int | None = None
    eval_ns: int | None = None
    response_id: str | None = None
    """The id the answer gave itself (OpenAI's ``chatcmpl-…``, Anthropic's ``msg_…``, a
    Responses ``resp_…``): as given, a text or None; Ollama's native answers have none."""
    dimensions: int | None = None
    """An embedding's: how many numbers each vector of the answer holds (None: none seen)."""
    only: str | None = None
    """``"load"`` or ``"unload"``: the call only loaded the model into memory, or unloaded it.
    Nothing was evaluated or generated, so the counts and busy time are the zeros Ollama
    omitted; a load's time is the load's."""


def dimensions_of(answer: Any, vectors: str) -> int | None:
    """How many numbers the first vector of an embedding ``answer`` holds, its vectors in
    member ``vectors``: ``embeddings`` (``/api/embed``: a list of them), ``embedding`` (the
    old route's one), ``data`` (OpenAI's, each in an object); None where there is none to
    count (an answer too large to hold, its vectors not kept: ``_answer.NOT_KEPT``)."""
    found = answer.get(vectors)
    if vectors != "embedding":
        found = found[0] if isinstance(found, list) and found else None
    if vectors == "data":
        found = found.get("embedding") if isinstance(found, dict) else None
    if isinstance(found, list) and found and isinstance(found[0], int | float):
        return len(found)
    return None


Event = Delta | Final | UpstreamError
"""One thing an upstream's answer told the meter."""
