"""The cost span: one record per metered call, as pure data.

Owns the record's fields and vocabularies (status, source, token source) and
id generation. It knows nothing of databases, HTTP or rendering; the ledger maps
it to a row, telemetry maps it to an OTel span.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any

from ollama_meter.records._price import Cost
from ollama_meter.records._trace import TraceParent

Said = tuple[tuple[str | None, tuple[int, ...]], ...]
"""A prompt's messages: each one's role (None: instructions apart) and its texts' lengths."""
Called = tuple[str | None, str, object]
"""A tool call: its id (None: the wire gave none), name and arguments as sent."""
Told = tuple[str | None, tuple[Called, ...]]
"""What a message of a prompt said beside its texts: the id of the call it answers (a tool's
result; None: none given), and the tool calls it made (an earlier reply's)."""


@dataclass(frozen=True, slots=True)
class Asked:
    """How a request asked the model to generate: the settings the GenAI conventions name
    (``gen_ai.request.*``), each None where the request did not set it, or not as a number
    (a text) a model reads. Exported on the call's span; not stored in the ledger."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: float | None = None
    seed: int | None = None
    stop_sequences: tuple[str, ...] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    choice_count: int | None = None
    output_type: str | None = None  # "json" or "text": the reply's format the request asked for


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    REJECTED = "rejected"
    CLIENT_ABORT = "client_abort"
    INTERRUPTED = "interrupted"
    """The process recording the call died while the call was in flight; its end is unknown."""


class Stored(StrEnum):
    """Where a recorded span ended up."""

    COMMITTED = "committed"
    SPOOLED = "spooled"
    """Written to the spool: the database was busy or away; recorded later."""
    QUARANTINED = "quarantined"
    """Refused by the database for its content, or started before the prune horizon (no write
    records those: the ledger cannot tell whether its rollups count them already); kept in
    the quarantine folder."""
    HELD = "held"
    """Only in this process's memory: nothing on disk could take it (yet)."""


DURABLE = frozenset({Stored.COMMITTED, Stored.SPOOLED, Stored.QUARANTINED})


class Source(StrEnum):
    CLI = "cli"
    GATEWAY = "gateway"
    SDK = "sdk"


class TokenSource(StrEnum):
    REPORTED = "reported"
    ESTIMATED = "estimated"


class DurationSource(StrEnum):
    """Who timed a call's busy time (prompt evaluation and generation)."""

    REPORTED = "reported"
    """Ollama, in its final chunk: exact."""
    MEASURED = "measured"
    """The meter's clock, where Ollama said nothing (its OpenAI-compatible routes, an
    aborted stream): an upper bound, since it includes network, queueing and loading. Also
    Ollama's figures with the meter's added, for a pass it ran and did not report."""


GROUPS: tuple[str, ...] = ("tenant", "department", "user", "model")
"""What spans are summed by in rollups and reports. ``user`` is ``''`` for a span without
one; ``model`` is the answering model, else the requested one."""


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_span_row_id(now_ns: int | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 chars.

    Sorting ids sorts spans by start time (to the millisecond), and the random
    part makes collisions across processes and gateways practically impossible.
    """
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    return _ulid(millis, os.urandom(10))


_DIGIT_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -10, -10))


def _ulid(millis: int, entropy: bytes) -> str:
    """The 26 digits of ``millis`` then ``entropy`` (their low 130 bits), two at a time:
    half the time of one at a time, a span's id made at every call."""
    value = ((millis << 80) | int.from_bytes(entropy, "big")) & ((1 << 130) - 1)
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_span_ids() -> tuple[str, str, str]:
    """A new span's ledger id (:func:`new_span_row_id`), trace id and OTel span id, from one
    read of the system's randomness instead of three (a system call each, every call)."""
    entropy = os.urandom(34)
    return (
        _ulid(time.time_ns() // 1_000_000, entropy[:10]),
        entropy[10:26].hex(),
        entropy[26:].hex(),
    )


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_otel_span_id() -> str:
    return os.urandom(8).hex()


NO_HOST = ""
"""``upstream_host`` of a call sent to no server: refused before one was chosen (a budget, a
rate limit, a full queue, a malformed request), or its caller gone while it waited."""


@dataclass(slots=True)
class SpanRecord:
    """Everything the ledger keeps about one call (DESIGN §5).

    Times are aware UTC datetimes; durations are integer nanoseconds; money is
    integer micro-units of ``currency``.
    """

    id: str
    """The ledger's id of the call (a ULID): what ``ometer log`` shows, ``MeterInfo.id``."""
    trace_id: str
    span_id: str
    """The OpenTelemetry span id (16 hex digits), exported as ``otel_span_id``; not the ledger's id."""
    started_at: datetime
    tenant: str
    department: str
    source: str
    operation: str
    upstream_host: str
    """The server the call was sent to (its last, after a move); :data:`NO_HOST` for a call
    that went to none (refused, or gone while it waited), so it names no server's capacity."""
    request_model: str
    stream: bool
    currency: str
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    ended_at: datetime | None = None
    response_model: str | None = None
    status: str = Status.OK
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    done_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    token_source: str = TokenSource.REPORTED
    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_duration_ns: int | None = None
    eval_duration_ns: int | None = None
    duration_source: str | None = None
    latency_ns: int | None = None
    ttft_ns: int | None = None
    queue_ns: int | None = None
    """Time the call waited before it was sent: in the gateway for a free slot, in the Python
    API for its ``on_start`` hook (its latency and TTFT include it; never Ollama's busy time)."""
    cost_tokens: int = 0
    cost_compute: int = 0
    cost_energy: int = 0
    cost_fee: int = 0
    cost_total: int = 0
    price_rule_id: int | None = None
    unpriced: bool = True
    prompt: str | None = None
    reply: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    """Extra attributes hooks add for telemetry; not stored in the ledger."""
    said: Said = field(default=(), compare=False, repr=False)
    """Who said what of ``prompt``: each message's role (None: instructions given apart from
    the messages) and the length of each of its texts there, joined by line breaks. Exported
    as the conventions' messages; not stored in the ledger (nor part of a span's equality)."""
    told: tuple[Told, ...] = field(default=(), compare=False, repr=False)
    """What each message of :attr:`said` said beside its texts (none said anything: empty):
    the call a tool's result answers, the calls an earlier reply made; exported as the
    conventions' ``tool_call_response`` and ``tool_call`` parts; not stored in the ledger."""
    called: tuple[Called, ...] = field(default=(), compare=False, repr=False)
    """The tool calls the reply made, where content is captured: exported as the conventions'
    ``tool_call`` parts; not stored in the ledger (its reply is the reply's text)."""
    asked: Asked | None = field(default=None, compare=False, repr=False)
    """The settings the request asked the model to generate with, where it set any: exported
    as the conventions' ``gen_ai.request.*``; not stored in the ledger."""
    response_id: str | None = field(default=None, compare=False, repr=False)
    """The id the upstream gave its answer (``chatcmpl-…``, ``msg_…``, ``resp_…``; Ollama's
    native answers have none), as given: exported as ``gen_ai.response.id``, bounded; not
    stored in the ledger."""
    dimensions: int | None = field(default=None, compare=False, repr=False)
    """An embedding's: numbers in each vector of its answer, where it showed them (exported)."""
    parent: TraceParent | None = field(default=None, compare=False, repr=False)
    """The caller's span of the call (its W3C ``traceparent``), whose child this call's is."""
    traced: TraceParent | None = field(default=None, compare=False, repr=False)
    """The call's own exported span, named as parent to what it calls; None: none exported."""

    @property
    def model(self) -> str:
        """The model the call ran on: Ollama's answer when it gave one."""
        return self.response_model or self.request_model

    def durations(self) -> dict[str, int | None]:
        """Ollama's durations and the meter's timings (latency, TTFT, the queue), in ns."""
        return {
            "total": self.total_duration_ns,
            "load": self.load_duration_ns,
            "prompt_eval": self.prompt_eval_duration_ns,
            "eval": self.eval_duration_ns,
            "latency": self.latency_ns,
            "ttft": self.ttft_ns,
            "queue": self.queue_ns,
        }

    @property
    def unpriced_usage(self) -> bool:
        """Usage that no price rule covered: worth flagging, unlike a failure that consumed nothing."""
        return self.unpriced and (
            self.status == Status.OK or self.input_tokens + self.output_tokens > 0
        )

    def fail(
        self,
        error_type: str,
        message: str | None = None,
        *,
        status: Status = Status.ERROR,
        http_status: int | None = None,
        instant: bool = False,
    ) -> None:
        """Mark the call as not ok: failed, refused (``rejected``), aborted or interrupted.

        The one way every part of the meter ends a span badly. ``instant``: the call was
        refused before it began, so it took no time.
        """
        self.status = status
        self.error_type = error_type
        if message is not None:
            self.error_message = message[: TEXT_LIMITS["error_message"]]
        if http_status is not None:
            self.http_status = http_status
        if instant:
            self.ended_at = self.started_at
            self.latency_ns = 0

    def apply_cost(self, cost: Cost) -> None:
        self.cost_tokens = cost.tokens
        self.cost_compute = cost.compute
        self.cost_energy = cost.energy
        self.cost_fee = cost.fee
        self.cost_total = cost.total
        self.currency = cost.currency
        self.price_rule_id = cost.rule_id
        self.unpriced = cost.unpriced

    def as_row(self) -> dict[str, Any]:
        """Column name → value, as the ledger stores it."""
        return dict(zip(ROW_FIELDS, _row_of(self), strict=True))


_EXPORTED_ONLY = ("attributes", "said", "told", "called", "asked", "response_id", "dimensions")
ROW_FIELDS: tuple[str, ...] = tuple(
    name
    for name in SpanRecord.__dataclass_fields__
    if name not in (*_EXPORTED_ONLY, "parent", "traced")
)
"""The fields the ledger stores, a column each, in the order of the dataclass."""
_row_of = attrgetter(*ROW_FIELDS)  # all at once: a span's row is made at every call

# -- what the ledger can store -------------------------------------------------------------

TEXT_LIMITS: dict[str, int] = {
    "id": 26, "trace_id": 32, "span_id": 16, "tenant": 64, "department": 64, "user": 128,
    "source": 16, "operation": 32, "upstream_host": 255, "request_model": 255,
    "response_model": 255, "status": 16, "error_type": 32, "done_reason": 32,
    "token_source": 16, "duration_source": 16, "currency": 3,
    "error_message": 2000, "prompt": 1_000_000, "reply": 1_000_000,
}  # fmt: skip
"""Characters each text column holds; a test keeps these equal to the ledger's columns."""
LABEL_FIELDS = frozenset({
    "trace_id", "span_id", "source", "operation", "upstream_host", "request_model",
    "response_model", "status", "error_type", "done_reason", "token_source", "duration_source",
})  # fmt: skip
"""Texts that reports group by and tables show: printable only (a control character becomes
U+FFFD), so a hostile model name puts no escape into a terminal, a CSV or an export line."""
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_TOKENS = 2**31 - 1
"""The token columns are 32-bit; no real call comes near."""
MAX_DURATION_NS = 10**15
"""About 11.6 days: longer than any call; a lying upstream's figure is cut to this."""
COUNT_FIELDS = ("input_tokens", "output_tokens")
DURATION_FIELDS = (
    "total_duration_ns", "load_duration_ns", "prompt_eval_duration_ns", "eval_duration_ns",
    "latency_ns", "ttft_ns", "queue_ns",
)  # fmt: skip
_TEXTS = tuple((name, limit, name in LABEL_FIELDS) for name, limit in TEXT_LIMITS.items())
_NUMBERS = tuple((name, MAX_TOKENS) for name in COUNT_FIELDS) + tuple(
    (name, MAX_DURATION_NS) for name in DURATION_FIELDS
)
_MODELS = frozenset({"request_model", "response_model"})
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text cannot hold it) and lone surrogates (UTF-8 cannot encode them)."""


def storable_text(value: str, limit: int) -> str:
    """``value`` as every backend can store it: no NUL, no lone surrogate, at most ``limit`` chars.

    What cannot be stored becomes U+FFFD; what is too long is cut and ends in "…".
    """
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub("\ufffd", value)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def printable(text: str) -> str:
    """``text`` with U+FFFD for each character that is not printable (a control character, a
    line break): a label a terminal, a CSV or a backend's list shows puts no escape there."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in text)


def _stored_model(name: str, limit: int) -> str:
    """A model's name that does not fit as it is, as the ledger keeps it: counting as the same
    model (:func:`~ollama_meter.records.counted_model`) as the name sent. Cut, or a character
    replaced, before it was folded, blanks around it (``" " + 300 letters``, ``"gemma3\n"``)
    moved the cut or became U+FFFD, and one model counted as two.

    Blanks around it go first (the fold drops them); then a name that fits keeps its letters
    (U+FFFD for what cannot be shown), and one that does not is kept as the one name it
    counts under, which fits. A name of only blanks names no model: shown as it is."""
    if name.strip():
        name = name.strip()
    if len(name) > limit:
        from ollama_meter.records._counted import counted_model  # it folds with this module

        return counted_model(name)
    return printable(storable_text(name, limit))


def _bounded(value: object, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), top)


_texts_of = attrgetter(*TEXT_LIMITS)
_numbers_of = attrgetter(*(name for name, _ in _NUMBERS))
_AS_IS = re.compile(
    "\x00".join(
        f"[ -~]{{0,{limit}}}" if name in LABEL_FIELDS else f"[^\x00\ud800-\udfff]{{0,{limit}}}"
        for name, limit in TEXT_LIMITS.items()
    )
)
"""Every text field as :func:`_storable_texts` leaves it, joined by NUL (none may hold one,
so each field's part is found where it is): within its limit, with no lone surrogate, and a
label printable ASCII (the common case: anything else goes field by field)."""


def _texts_as_is(span: SpanRecord) -> bool:
    """Whether :func:`_storable_texts` would leave every text field of ``span`` as it is: one
    match over them all, where a field at a time took some eighty calls, twice a call."""
    try:  # a field that is no text (nor None) is made one: not as it is
        joined = "\x00".join(["" if text is None else text for text in _texts_of(span)])
    except TypeError:
        return False
    return _AS_IS.fullmatch(joined) is not None


def _storable_texts(span: SpanRecord) -> None:
    for name, limit, label in _TEXTS:
        value = given = getattr(span, name)
        if value is None:
            continue
        if not isinstance(value, str):
            value = str(value)
        if not value.isascii() or len(value) > limit or "\x00" in value:
            value = storable_text(value, limit)
        if label:
            value = printable(value)
        if value != given and name in _MODELS:
            value = _stored_model(str(given), limit)
        if value is not given:
            setattr(span, name, value)


def make_storable(span: SpanRecord) -> SpanRecord:
    """Bring every field of ``span`` within what the ledger stores, in place; idempotent.

    Values reach a span from callers and from Ollama (model names, error texts, tags,
    counts, durations), so any of them may be hostile or malformed. Done once at the
    meter's boundary, a span can never fail a write for its content.
    """
    # A field already within bounds is left as it is (it is most of them, twice a call).
    if not _texts_as_is(span):
        _storable_texts(span)
    if span.tags:
        span.tags = {
            storable_text(str(k), MAX_TAG_KEY): storable_text(str(v), MAX_TAG_VALUE)
            for k, v in span.tags.items()
        }
    for value, (name, top) in zip(_numbers_of(span), _NUMBERS, strict=True):
        # (an int within bounds: _bounded would keep it; a duration may be unknown: None)
        if (type(value) is not int or not 0 <= value <= top) and (
            value is not None or name in COUNT_FIELDS
        ):
            setattr(span, name, _bounded(value, top))
    if span.http_status is not None and not (
        isinstance(span.http_status, int) and 100 <= span.http_status <= 999
    ):
        span.http_status = None
    return span
