"""What a request says about the call it asks for, read the same way for every wire format.

The meter needs three things from a request before it goes upstream: the text it
sends (to estimate tokens Ollama does not count), the most tokens it can count
in and out (to bound its cost for a hard budget), and where to put a reply cap
when the meter must impose one. Ollama's native bodies and OpenAI's differ in
shape only; both are read here, defensively: a request is untrusted input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_SEEN,
    MESSAGE_TOKENS,
    TEMPLATE_TOKENS,
    CallBound,
)
from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT, SECOND_PASS_TOKENS
from ollama_meter.budgets._shown import PromptShape
from ollama_meter.meter._asked import asked_of
from ollama_meter.meter._attribution import Attribution
from ollama_meter.meter._compat import (
    Turn,
    chat_input,
    continued,
    formatted,
    messages_input,
    responses_input,
    searched,
    text_of,
)
from ollama_meter.meter._media import (
    PICTURE_TOKENS,
    NoBound,
    audio_tokens,
    picture_size,
    picture_tokens,
    stretched_tokens,
)
from ollama_meter.meter._templates import template_bound
from ollama_meter.meter._told import Mark, told_apart
from ollama_meter.meter._usage import estimate_tokens, tokens_in_chars
from ollama_meter.meter._written import (
    WEB_SEARCH_BYTES,
    bytes_of,
    calls_in,
    names_by_call_id,
    parts_in,
    tools_bytes,
    web_searches,
)
from ollama_meter.records import MAX_TOKENS, Asked, Said, Told

OPENAI_PREFIX = "openai."
PICTURES_IN_PLACE = 64 * 1024
"""The most picture text an event loop reads for a bound (as a body past 64 KiB is checked
off the event loop, so are its pictures)."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the meter reads from a request before calling upstream."""

    prompt_text: str
    """Every text the request sends, joined: what unreported input tokens are estimated from."""
    prompt_bytes: int
    """UTF-8 bytes of everything that becomes prompt tokens (text, tool definitions)."""
    turns: Sequence[tuple[str | None, list[str]]] = field(default=(), repr=False, compare=False)
    """The texts of ``prompt_text`` by who said them (:attr:`said` counts them)."""
    marks: Sequence[Mark] = field(default=(), repr=False, compare=False)
    """What its messages said beside their texts (:mod:`._told`), by reference."""
    asking: tuple[str, Mapping[str, Any], Mapping[str, Any], int | None] | None = field(
        default=None, repr=False, compare=False
    )
    """The operation, body, options and reply cap :attr:`asked` reads."""
    written_bytes: int = 0
    """Of ``prompt_bytes``, those not in ``prompt_text``: tool definitions, tool calls and
    results written as JSON, as the template writes them."""
    messages: int = 0
    """Pieces the model marks on their own: chat messages (role markers), embedding inputs
    (each tokenized apart, with the model's special tokens such as BERT's [CLS] and [SEP])."""
    images: int = 0
    given_tokens: int = 0
    """Tokens sent as numbers (``context`` arrays, OpenAI token-id inputs)."""
    max_output: int | None = None
    """The reply cap the caller set (``num_predict``, ``max_tokens``), if any."""
    context: int | None = None
    """The context size the caller set (``num_ctx``): no reply is longer."""
    embedding: bool = False
    unbounded: str | None = None
    """Why no bound holds what the call may count, when none does: no hard budget admits it."""
    evaluates: bool | None = None
    """Whether Ollama evaluates anything for the request; False: it only loads the model (or
    unloads it), as it does for a generate whose ``prompt`` is empty whatever else the body
    holds (a system message, a suffix, images), a chat with no messages, an embedding of no
    input. None: as the request's texts say (some text: it evaluates)."""
    passes: int = 1
    """2: a chat Ollama may run twice, reporting the second pass only (a ``format``, which a
    thinking model is given once it has thought: the thinking comes back in the prompt)."""
    rendered: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    """The body, when the model's own template renders it (:attr:`shape`); None: it does not."""
    media: object = field(default=None, repr=False, compare=False)
    """The body, where a WAV or a video may be sent as a picture (:mod:`._media`): read by
    :meth:`bound` only, a walk of the whole body only a hard budget's admission needs."""

    @property
    def said(self) -> Said:
        """Who said which texts of ``prompt_text`` (:attr:`SpanRecord.said`)."""
        return self.told_apart()[0]

    def told_apart(self) -> tuple[Said, tuple[Told, ...]]:
        """:attr:`SpanRecord.said` and ``told``: read when asked, as only an exported prompt
        needs them (content capture)."""
        return told_apart(self.turns, self.marks)

    @property
    def asked(self) -> Asked | None:
        """The settings it asks the model to generate with (:attr:`SpanRecord.asked`): read
        when read, as only telemetry and hooks need."""
        return None if self.asking is None else asked_of(*self.asking)

    @property
    def shape(self) -> PromptShape | None:
        """What the model's own template writes of the request; None: it is not rendered with it.
        Counted when read (a walk of the whole body only a hard budget's admission needs)."""
        body = self.rendered
        if body is None:
            return None
        tools = body.get("tools")
        said = [body.get("messages"), body.get("input")]
        calls, parts = sum(map(calls_in, said)), parts_in([tools, *said])
        count = len(tools) if isinstance(tools, list) else 0
        messages = self.messages + self.passes - 1  # a second pass's thinking, a message
        return PromptShape(messages, count, calls, parts, self.prompt_bytes)

    def text_estimate(self) -> int:
        """About how many tokens the prompt's texts are: its texts and what the template
        writes as JSON (tools, earlier tool calls) at about four bytes of UTF-8 a token, and
        the tokens sent as numbers. Pictures apart: a model may count one as a few tokens or
        as thousands (a tpm limit counts them apart)."""
        written = tokens_in_chars(self.written_bytes)
        return estimate_tokens(self.prompt_text) + written + self.given_tokens

    def input_estimate(self) -> int:
        """About how many tokens the prompt is, for when Ollama does not count it (a caller
        that hung up, a stream broken off): its texts, and each picture what a vision model
        commonly counts of one (``IMAGE_TOKENS_SEEN``). Counted as nothing, a caller that hung
        up on the first token had twenty pictures' prompt evaluated for free."""
        return self.text_estimate() + self.images * IMAGE_TOKENS_SEEN

    def prompt_most(self, said: int | None = None) -> int | None:
        """The most prompt tokens an honest Ollama counts for the request, as its text and
        its pictures tell (see :func:`~._honest.prompt_at_most`); None where they do not
        bound them: a moving picture (a video, counted as frames), a chat Ollama may run
        twice (the first pass's thinking, as long as it likes, is the second's prompt), a
        request no bound holds, a sound whose length its header does not say.

        Asked of a count ``said`` within what the text and :data:`PICTURE_TOKENS` a picture
        hold, that is the answer: no picture is decoded (an event loop may ask)."""
        if self.passes > 1 or self.unbounded is not None:
            return None
        try:
            heard = audio_tokens(self.media)
        except NoBound:
            return None
        own = self.messages * MESSAGE_TOKENS + TEMPLATE_TOKENS + MAX_HIDDEN_PROMPT
        text = self.prompt_bytes + self.given_tokens + heard + own
        if not self.images:
            return text
        if said is not None and said <= text + self.images * PICTURE_TOKENS:
            return text + self.images * PICTURE_TOKENS  # the pictures' sizes matter not
        try:
            return text + picture_tokens(self.media, self.images)
        except NoBound:
            return None

    def bound(self, default_output: int, *, blocking: bool = True) -> CallBound:
        """The most tokens the call can count; ``default_output`` when the caller set no cap.

        ``blocking`` False (an event loop): :class:`WouldBlock` when its pictures are too
        large to read there (each is decoded to tell a still picture from a video)."""
        if not blocking and self.images and picture_size(self.media) > PICTURES_IN_PLACE:
            raise WouldBlock("the call's pictures are read off the event loop")
        media = self.images * IMAGE_TOKENS + _heard(self.media)
        inputs = (
            self.prompt_bytes
            + self.given_tokens
            + self.messages * MESSAGE_TOKENS
            + TEMPLATE_TOKENS
            + media
        )
        if self.embedding:
            return CallBound(inputs, 0, media=media > 0)
        if self.max_output is not None:  # no span counts more: no larger cap is sent
            outputs = min(self.max_output, MAX_TOKENS)
        else:
            outputs = min(default_output, self.context or default_output)
        if self.passes == 1:
            return CallBound(inputs, outputs, media=media > 0)
        # The first pass thinks up to the cap; its thinking is the second pass's prompt too,
        # in an assistant message of its own (the reply has the cap to itself again).
        second = outputs + MESSAGE_TOKENS + SECOND_PASS_TOKENS
        return CallBound(inputs + second, outputs, passes=self.passes, media=media > 0)


def _heard(body: object) -> int:
    """The most tokens the sounds in ``body`` may count, and its thin pictures past
    ``IMAGE_TOKENS``; as many as a span holds when a WAV says nothing of its length, or a
    picture may be a video (a template that cannot be read is bounded so too)."""
    try:
        return audio_tokens(body) + stretched_tokens(body, IMAGE_TOKENS)
    except NoBound:
        return MAX_TOKENS


@dataclass(frozen=True, slots=True)
class Opening:
    """A call before it runs: what it is and who it is for, all the meter needs to open it."""

    operation: str
    model: str
    stream: bool
    attribution: Attribution
    facts: RequestFacts | None = None
    queued: bool = False
    """The call may wait (the gateway's queue) before it goes to Ollama: it is journaled by
    :meth:`Meter.sending` when it goes, so a crash meanwhile charges nobody for it."""


def options_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's ``options`` as a dict: a mapping, or the ``ollama.Options`` model the SDK takes."""
    options = body.get("options")
    if isinstance(options, Mapping):
        return dict(options)
    dump = getattr(options, "model_dump", None)
    if callable(dump):
        dumped = dump(exclude_none=True)
        return dict(dumped) if isinstance(dumped, Mapping) else {}
    return {}


def _positive_int(value: object) -> int | None:
    """A caller's cap: a positive integer, else None (Ollama reads -1/-2 as "no cap")."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _option_int(value: object) -> int | None:
    """An integer option as Ollama reads it: JSON numbers come to it as floats, which it
    truncates (``num_predict`` 8.0 or 8.5 is 8); positive, else None."""
    if isinstance(value, float) and math.isfinite(value):
        return _positive_int(int(value))
    return _positive_int(value)


_MESSAGES = "anthropic.messages"


def _inputs(value: object) -> tuple[list[str], int, int]:
    """Embedding inputs: texts, tokens given as numbers (OpenAI accepts token ids), and how
    many inputs there are (each is tokenized on its own)."""
    if isinstance(value, str):
        return [value], 0, 1
    texts: list[str] = []
    tokens = count = 0
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):  # one input of token ids
            return texts, len(value), 1
        for item in value:
            count += 1
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int):
                tokens += 1
            elif isinstance(item, list):
                tokens += len(item)
    return texts, tokens, count


_LOADS_WHEN_EMPTY = {
    "chat": "messages",
    "generate": "prompt",
    "embed": "input",
    "embeddings": "prompt",
}
"""Ollama's native operations that only load the model when this field is empty."""


def _evaluates(kind: str, body: Mapping[str, Any]) -> bool:
    """Whether Ollama evaluates anything for a native request: a non-empty prompt, messages
    or input (any other field, a system message or images, does not make it evaluate)."""
    value = body.get(_LOADS_WHEN_EMPTY[kind])
    return bool(value) if isinstance(value, str | list | tuple) else False


def facts_of(operation: str, body: Mapping[str, Any]) -> RequestFacts:
    """Read ``body`` (Ollama native, or OpenAI for ``openai.*`` operations)."""
    openai = operation.startswith(OPENAI_PREFIX)
    kind = operation.removeprefix(OPENAI_PREFIX)
    options = options_of(body)
    if kind == "responses":  # the Responses API's one cap (it has no max_tokens)
        cap = _positive_int(body.get("max_output_tokens"))
    elif operation == _MESSAGES:  # the Messages API's one cap, which Ollama requires
        cap = _positive_int(body.get("max_tokens"))
    elif openai:  # either field may cap the reply; the smaller one is what the caller asked
        caps = [_positive_int(body.get(f)) for f in ("max_tokens", "max_completion_tokens")]
        cap = min((c for c in caps if c is not None), default=None)
    else:
        cap = _option_int(options.get("num_predict"))
    turns: list[Turn] = []
    marks: list[Mark] = []
    messages = images = extra = given = no_values = 0
    unbounded = None
    embedding = kind in ("embed", "embeddings")
    if kind == "chat":
        turns, messages, images, extra = chat_input(body.get("messages"), marks)
        extra += tools_bytes(body.get("tools"))
        if openai:  # Ollama names each tool result by its call's id
            extra += names_by_call_id(body.get("messages"))
    elif kind == "responses":
        turns, messages, images, extra = responses_input(body, marks)
        extra += tools_bytes(body.get("tools"))
        unbounded = continued(body) or searched(body.get("tools"))
    elif operation == _MESSAGES:  # Ollama writes a web search tool its own way
        turns, messages, images, extra = messages_input(body, marks)
        searches = web_searches(body.get("tools"))
        extra += tools_bytes(body.get("tools")) + WEB_SEARCH_BYTES * len(searches)
        unbounded = searched(body.get("tools"))
    elif embedding:  # the field Ollama embeds: a legacy /api/embeddings reads only its prompt
        texts, given, messages = _inputs(
            body.get("prompt" if operation == "embeddings" else "input")
        )
        turns = [("user", texts)]
    else:  # generate, completions
        prompt = body.get("prompt")
        if openai and isinstance(prompt, list):
            texts, given, _ = _inputs(prompt)
        else:
            texts = [text_of(prompt)]
        turns = [
            ("user", [*texts, text_of(body.get("suffix"))]),
            (None, [text_of(body.get(key)) for key in ("system", "template")]),
        ]
        if not openai and text_of(body.get("template")) and not body.get("raw"):  # Go renders it
            no_values, unbounded = template_bound(body["template"])
        if isinstance(body.get("images"), list):
            images = len(body["images"])
        context = body.get("context")
        if isinstance(context, list):
            given += len(context)
    turns = [(role, [t for t in said if t]) for role, said in turns]
    texts = [t for _, said in turns for t in said]
    prompt_text = "\n".join(texts)
    size = sum(bytes_of(t) for t in texts) + extra + no_values
    own = kind == "generate" and not openai and (body.get("raw") or text_of(body.get("template")))
    return RequestFacts(
        passes=2 if kind in ("chat", "responses") and formatted(openai, kind, body) else 1,
        rendered=None if embedding or own else body,
        media=None if embedding else body,
        evaluates=None if openai or kind not in _LOADS_WHEN_EMPTY else _evaluates(kind, body),
        prompt_text=prompt_text,
        turns=turns,
        marks=marks,
        asking=(operation, body, options, cap),
        prompt_bytes=size,
        written_bytes=extra,
        messages=messages,
        images=images,
        given_tokens=given,
        max_output=None if embedding else cap,
        context=_option_int(options.get("num_ctx")),
        embedding=embedding,
        unbounded=unbounded,
    )


def with_output_cap(operation: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """``body`` with the reply capped at ``cap`` tokens, in the wire format's own field.

    On OpenAI's routes Ollama honours ``max_tokens``; ``max_completion_tokens``, when the
    caller named it, says the same, so no reader of the body finds a larger cap. On the
    Responses API it honours ``max_output_tokens`` only, on the Messages API ``max_tokens``.
    """
    new = dict(body)
    if operation == f"{OPENAI_PREFIX}responses":  # the one cap Ollama reads there
        new["max_output_tokens"] = cap
    elif operation == _MESSAGES:  # Ollama's num_predict there is max_tokens
        new["max_tokens"] = cap
    elif operation.startswith(OPENAI_PREFIX):
        new["max_tokens"] = cap
        if "max_completion_tokens" in new:
            new["max_completion_tokens"] = cap
    else:
        new["options"] = {**options_of(body), "num_predict": cap}
    return new
