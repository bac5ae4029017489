"""The emulated models and the pure arithmetic behind every reply the emulator gives.

Owns :class:`EmulatedModel`, :data:`DEFAULT_MODELS`, model-name resolution and the
deterministic functions that turn a prompt into reply words, token counts, durations
and embedding vectors. Nothing here touches a socket, so tests can compute exactly
what the emulator will answer (:func:`expected_reply`, :func:`expected_counts`,
:func:`expected_embedding`) without calling it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ollama_meter.testing._names import find_model

WARM_LOAD_NS = 5_000
"""``load_duration`` reported when one of :data:`DEFAULT_MODELS` is already loaded (warm)."""

OVERHEAD_NS = 1_250
"""What one of :data:`DEFAULT_MODELS` adds to ``total_duration`` (templating, sampling setup)."""

REAL_TIME = 400
"""How much slower than :data:`DEFAULT_MODELS` a GPU runs them (:data:`REAL_TIME_MODELS`). The
emulator spends every duration it reports (Ollama times its work inside the request, so no
figure is longer than the call timed around it): a cold load of 3 ms, 50 µs a reply token."""

MIN_REPLY_TOKENS = 8
MAX_REPLY_TOKENS = 40

# Plain words so replies read as text, and each word is exactly one emulated token.
_VOCABULARY = (
    "the", "model", "answer", "is", "clear", "and", "simple", "because", "data",
    "shows", "a", "steady", "trend", "over", "time", "we", "can", "see", "that",
    "each", "request", "uses", "tokens", "to", "build", "reply", "in", "short",
    "steps", "so", "cost", "stays", "low", "while", "quality", "remains", "high",
    "for", "most", "teams", "this", "means", "faster", "work", "with", "fewer",
    "errors", "overall", "local", "servers", "handle", "load", "well", "today",
    "users", "get", "useful", "results", "quickly", "every", "day", "it", "helps",
    "plan",
)  # fmt: skip


@dataclass(frozen=True)
class EmulatedModel:
    """One model the emulator has "pulled": its metadata and its deterministic speed.

    ``load_ns`` is the cold ``load_duration`` (``warm_load_ns`` the warm one); the per-token
    times scale ``prompt_eval_duration`` and ``eval_duration``; ``overhead_ns`` is added to
    ``total_duration``. The emulator spends each time it reports (see :data:`REAL_TIME`).
    ``reply_tokens`` fixes the reply length (else it derives from the prompt).
    ``template_tokens`` is what the model's template writes into every prompt on its own
    (text in its ``TEMPLATE``; an embedding model's special tokens, to each input): counted
    in ``prompt_eval_count``, sent by no request, written in ``/api/show``'s ``template``.
    ``system`` is a Modelfile ``SYSTEM``, as ``/api/show`` shows it: sent before a chat
    that has no system message of its own, and a generate that sets no ``system`` (not raw).
    Embedding models refuse chat and generate, as Ollama does. A ``thinking`` model thinks
    unless a request says ``think: false`` (Ollama turns thinking on by default for the
    models that can); any other model refuses ``think: true`` or a level.
    """

    name: str
    family: str
    parameter_size: str
    quantization_level: str
    size: int
    load_ns: int
    prompt_ns_per_token: int
    eval_ns_per_token: int
    embedding: bool = False
    reply_tokens: int | None = None
    embedding_dim: int = 768
    context_length: int = 4096
    template_tokens: int = 0
    system: str = ""
    thinking: bool = False
    warm_load_ns: int = WARM_LOAD_NS
    overhead_ns: int = OVERHEAD_NS

    @property
    def digest(self) -> str:
        """A stable sha256-looking digest, as /api/tags reports."""
        return hashlib.sha256(f"emulated:{self.name}".encode()).hexdigest()


DEFAULT_MODELS: tuple[EmulatedModel, ...] = tuple(
    EmulatedModel(
        name, family, parameter_size, quantization, size, load_ns, prompt_ns, eval_ns,
        embedding=embedding, embedding_dim=dim, context_length=context,
    )
    for name, family, parameter_size, quantization, size, load_ns, prompt_ns, eval_ns, dim, context, embedding in (
        # name, family, parameter size, quantization, size, load ns, ns per prompt token,
        # ns per reply token, embedding dimensions, context length, embedding-only
        ("llama3.1:8b", "llama", "8.0B", "Q4_K_M", 4_920_753_328, 3_000_000, 2_500, 50_000, 4096, 131_072, False),
        ("qwen2.5:7b", "qwen2", "7.6B", "Q4_K_M", 4_683_087_332, 2_750_000, 2_250, 45_000, 3584, 32_768, False),
        ("mistral:7b", "llama", "7.2B", "Q4_0", 4_113_301_824, 2_500_000, 2_000, 40_000, 4096, 32_768, False),
        ("nomic-embed-text:latest", "nomic-bert", "137M", "F16", 274_302_450, 750_000, 250, 0, 768, 2048, True),
    )
)  # fmt: skip


THINKING_MODEL = EmulatedModel(
    "qwen3:8b", "qwen3", "8.2B", "Q4_K_M", 5_225_376_047, 3_250_000, 2_750, 55_000,
    embedding_dim=4096, context_length=40_960, thinking=True,
)  # fmt: skip
"""A model that thinks before it answers (``message.thinking``), like qwen3 or deepseek-r1.
Not among :data:`DEFAULT_MODELS`: start an emulator with it when a test needs one."""


def at_real_time(model: EmulatedModel, slower: int = REAL_TIME) -> EmulatedModel:
    """``model`` at a GPU's pace: each of its times ``slower`` (:data:`REAL_TIME`) times as long."""
    return replace(
        model,
        load_ns=model.load_ns * slower,
        warm_load_ns=model.warm_load_ns * slower,
        prompt_ns_per_token=model.prompt_ns_per_token * slower,
        eval_ns_per_token=model.eval_ns_per_token * slower,
        overhead_ns=model.overhead_ns * slower,
    )


REAL_TIME_MODELS: tuple[EmulatedModel, ...] = tuple(map(at_real_time, DEFAULT_MODELS))
""":data:`DEFAULT_MODELS` at a GPU's pace (llama3.1:8b: a 1.2 s load, 20 ms a token), as
``python -m ollama_meter.testing --real-time`` serves them (the README's walkthrough)."""


def _resolve(model: EmulatedModel | str, models: Iterable[EmulatedModel]) -> EmulatedModel:
    if isinstance(model, EmulatedModel):
        return model
    found = find_model(models, model)
    if found is None:
        raise KeyError(f"no emulated model named {model!r}")
    return found


def count_tokens(text: str) -> int:
    """The emulator's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def message_texts(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The text contents of chat messages (non-string contents count as empty)."""
    return [m["content"] if isinstance(m.get("content"), str) else "" for m in messages]


def generate_texts(prompt: str, system: str | None) -> list[str]:
    """/api/generate as the chat it is templated into: the system message, then the prompt."""
    return [system, prompt] if system else [prompt]


def num_predict(options: Mapping[str, Any] | None) -> int | None:
    """``options.num_predict`` when it caps the reply (>= 0), else None (negative means no cap)."""
    if not options:
        return None
    value = options.get("num_predict")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def _seed(texts: Sequence[str]) -> bytes:
    return hashlib.sha256("\n".join(texts).encode("utf-8", "replace")).digest()


def _word(seed: bytes, index: int) -> str:
    block = hashlib.sha256(seed + index.to_bytes(8, "big")).digest()
    return _VOCABULARY[int.from_bytes(block[:4], "big") % len(_VOCABULARY)]


@dataclass(frozen=True)
class ExpectedReply:
    """What the emulator answers to a prompt: the reply pieces and the final metrics.

    ``pieces`` are the streamed chunk contents in order (one token each: the first
    word, then ``" " + word``); ``content`` is their concatenation, which is also the
    non-streamed reply. A thinking reply streams its ``thinking_pieces`` first (one
    token each, in ``thinking``); a reply that calls a tool has no content pieces and
    one ``tool_calls`` chunk of ``tool_call_tokens`` tokens. ``eval_count`` counts them
    all, as Ollama's does: every token the model generated.
    """

    model: EmulatedModel
    prompt_tokens: int
    pieces: tuple[str, ...]
    done_reason: str
    thinking_pieces: tuple[str, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        return len(self.thinking_pieces) + len(self.pieces) + self.tool_call_tokens

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_pieces)

    def load_duration(self, *, cold: bool) -> int:
        return self.model.load_ns if cold else self.model.warm_load_ns

    @property
    def prompt_eval_duration(self) -> int:
        return self.prompt_tokens * self.model.prompt_ns_per_token

    @property
    def eval_duration(self) -> int:
        return self.output_tokens * self.model.eval_ns_per_token

    def total_duration(self, *, cold: bool) -> int:
        return (
            self.load_duration(cold=cold)
            + self.prompt_eval_duration
            + self.eval_duration
            + self.model.overhead_ns
        )

    def worked_ns(self, *, cold: bool) -> list[int]:
        """How long the model has worked when each streamed chunk leaves (thinking, text, a
        tool call, in the order they stream), then the final one: the load and the prompt's
        evaluation, then a reply token's time for each token generated so far; the final
        chunk at ``total_duration``. The emulator sends none sooner (see :data:`REAL_TIME`)."""
        start = self.load_duration(cold=cold) + self.prompt_eval_duration
        tokens = list(range(1, len(self.thinking_pieces) + len(self.pieces) + 1))
        if self.tool_calls:
            tokens.append(self.output_tokens)  # the whole call comes in one chunk
        due = [start + count * self.model.eval_ns_per_token for count in tokens]
        return [*due, self.total_duration(cold=cold)]

    def metrics(self, *, cold: bool) -> dict[str, int]:
        """The metric fields of the final chunk, in Ollama's order, zeros omitted.

        ``cold`` is True for the first call to the model since the emulator
        started or was reset.
        """
        fields = {
            "total_duration": self.total_duration(cold=cold),
            "load_duration": self.load_duration(cold=cold),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.output_tokens,
            "eval_duration": self.eval_duration,
        }
        return {key: value for key, value in fields.items() if value}


def _tool_call(tools: Sequence[Any], seed: bytes) -> dict[str, Any] | None:
    """The call the emulator makes to the first tool offered: each of its parameters given
    a word; None when no tool is offered in a shape it can call."""
    tool = tools[0] if tools else None
    function = tool.get("function") if isinstance(tool, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    parameters = function.get("parameters") if isinstance(function, Mapping) else None
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    names = (
        [key for key in properties if isinstance(key, str)]
        if isinstance(properties, Mapping)
        else []
    )
    arguments = {key: _word(seed, 1000 + i) for i, key in enumerate(names)}
    return {"function": {"name": name, "arguments": arguments}}


def _call_tokens(call: Mapping[str, Any]) -> int:
    """The tokens a tool call costs: the emulator's tokenizer over the call as the model writes it."""
    function = call["function"]
    written = json.dumps({"name": function["name"], "arguments": function["arguments"]})
    return count_tokens(written)


def reply_for_texts(
    model: EmulatedModel,
    texts: Sequence[str],
    options: Mapping[str, Any] | None,
    *,
    think: bool = False,
    tools: Sequence[Any] | None = None,
) -> ExpectedReply:
    """The reply to a prompt given as its message texts; see :func:`expected_reply`."""
    seed = _seed(texts)
    cap = num_predict(options)
    if model.reply_tokens is not None:
        length = model.reply_tokens
    else:
        spread = MAX_REPLY_TOKENS - MIN_REPLY_TOKENS + 1
        length = MIN_REPLY_TOKENS + int.from_bytes(seed[:4], "big") % spread
    thoughts = 1 + length // 2 if think else 0
    think_seed = hashlib.sha256(b"think\0" + seed).digest()
    thinking = tuple(
        _word(think_seed, i) if i == 0 else " " + _word(think_seed, i) for i in range(thoughts)
    )
    prompt_tokens = sum(count_tokens(text) for text in texts) + model.template_tokens
    call = _tool_call(tools, seed) if tools else None
    if call is not None and (cap is None or cap >= thoughts + _call_tokens(call)):
        return ExpectedReply(
            model, prompt_tokens, (), "stop", thinking, (call,), _call_tokens(call)
        )
    reason = "stop"
    if (
        cap is not None and cap < thoughts + length
    ):  # like Ollama: num_predict caps, it does not pad
        thinking = thinking[:cap]
        length, reason = cap - len(thinking), "length"
    pieces = tuple(
        _word(seed, i) if i == 0 else " " + _word(seed, i) for i in range(max(0, length))
    )
    return ExpectedReply(model, prompt_tokens, pieces, reason, thinking)


def expected_reply(
    model: EmulatedModel | str,
    messages: Sequence[Mapping[str, Any]] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    prompt: str | None = None,
    system: str | None = None,
    think: bool | str | None = None,
    tools: Sequence[Any] | None = None,
    models: Iterable[EmulatedModel] = (*DEFAULT_MODELS, THINKING_MODEL),
) -> ExpectedReply:
    """Exactly what the emulator replies to a chat (``messages``) or generate (``prompt``).

    - prompt tokens: the sum of ``len(text.split())`` over every message content
      (or over ``system`` and ``prompt`` for generate);
    - reply length: ``model.reply_tokens`` when set, else 8..40 derived from a sha256
      of the prompt text (done_reason ``"stop"``), cut to ``options["num_predict"]``
      when that is given, >= 0 and shorter (done_reason ``"length"``);
    - reply words: drawn deterministically from the same hash, so a shorter
      ``num_predict`` gives a prefix of the longer reply.

    A generate call with ``system`` and ``prompt`` replies like a chat whose
    messages are that system message and that user prompt. ``model`` is an
    :class:`EmulatedModel` or a name looked up in ``models``.

    A thinking model (``think`` as the request sends it: unset thinks) first thinks
    ``1 + length // 2`` words (``thinking``); ``num_predict`` caps thinking and reply
    together. With ``tools`` offered and the last message not a tool's result, a chat
    calls the first tool instead of replying (content empty; each of the tool's
    parameters given a word); its tokens are those of ``{"name": ..., "arguments": ...}``
    as JSON, split on whitespace.
    """
    resolved = _resolve(model, models)
    texts = generate_texts(prompt, system) if prompt is not None else message_texts(messages or ())
    calls = tools if prompt is None and wants_tool(messages or ()) else None
    return reply_for_texts(resolved, texts, options, think=thinks(resolved, think), tools=calls)


def thinks(model: EmulatedModel, think: object) -> bool:
    """Whether ``model`` thinks for a request's ``think`` (unset: as the model does by default)."""
    if not model.thinking:
        return False
    return think is None or think is True or (isinstance(think, str) and think != "")


def wants_tool(messages: Sequence[Mapping[str, Any]]) -> bool:
    """A chat offered tools calls one unless its last message is a tool's result."""
    last = messages[-1] if messages else None
    return not (isinstance(last, Mapping) and last.get("role") == "tool")


def expected_counts(
    model: EmulatedModel | str,
    messages: Sequence[Mapping[str, Any]] | None = None,
    options: Mapping[str, Any] | None = None,
    **keywords: Any,
) -> tuple[int, int]:
    """``(prompt_eval_count, eval_count)`` the emulator reports for what :func:`expected_reply` takes."""
    reply = expected_reply(model, messages, options, **keywords)
    return reply.prompt_tokens, reply.output_tokens


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _shortest_float32(value: float) -> float:
    # Go marshals float32 with the fewest digits that round-trip, so mirror that
    # (0.0123 rather than 0.012299999594688416) to keep the wire bytes alike.
    exact = _float32(value)
    for digits in range(1, 10):
        candidate = float(f"{exact:.{digits}g}")
        if _float32(candidate) == exact:
            return candidate
    return exact


def expected_embedding(
    model: EmulatedModel | str,
    text: str,
    *,
    dimensions: int | None = None,
    models: Iterable[EmulatedModel] = DEFAULT_MODELS,
) -> list[float]:
    """The unit-length vector /api/embed returns for ``text`` on ``model``; with
    ``dimensions`` (fewer than the model's), its first values normalised again, as Ollama
    cuts them."""
    resolved = _resolve(model, models)
    seed = hashlib.sha256(f"{resolved.name}\0{text}".encode("utf-8", "replace")).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < resolved.embedding_dim:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
        for offset in range(0, len(block), 2):
            unit = int.from_bytes(block[offset : offset + 2], "big") / 65535.0
            # Keep magnitudes away from zero so every value prints in plain
            # decimal notation in both Go and Python after normalising.
            magnitude = 0.05 + 0.95 * unit
            raw.append(magnitude if block[offset] & 1 else -magnitude)
    raw = raw[: resolved.embedding_dim]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    vector = [_shortest_float32(v / norm) for v in raw]
    if dimensions is not None and 0 < dimensions < len(vector):
        kept = vector[:dimensions]
        norm = math.sqrt(sum(v * v for v in kept)) or 1.0
        vector = [_shortest_float32(v / norm) for v in kept]
    return vector
