"""One line of an export read back into a span: every field checked, nothing stored half-right.

A line may hold only what the ledger stores unchanged: the records' limits
(``make_storable``'s) on names, texts, counts and durations, times within the
dates ometer works with, and money that is the sum of its parts and at most
what one call can cost (nothing, with no price rule, for a call no rule priced).
Anything else is a ValueError saying which field and why.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta

import msgspec

from ollama_meter._names import name_problem
from ollama_meter.ledger._members import each_key_once, lone_surrogate, no_json_number
from ollama_meter.periods import EARLIEST, FIRST_DAY, LAST_DAY
from ollama_meter.records import (
    MAX_CALL_COST,
    MAX_DURATION_NS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TOKENS,
    TEXT_LIMITS,
    DurationSource,
    SpanRecord,
    Status,
    TokenSource,
    format_micros,
    parse_currency,
)


class _Parts(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    tokens: str
    compute: str
    energy: str
    fee: str


class _Durations(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    total: int | None = None
    load: int | None = None
    prompt_eval: int | None = None
    eval: int | None = None
    latency: int | None = None
    ttft: int | None = None
    queue: int | None = None


class _Line(msgspec.Struct, kw_only=True, gc=False):
    """One exported span. Unknown keys are ignored: a newer export still imports. The fields
    are in the order an export writes them (:func:`_as_written`)."""

    id: str
    started_at: str
    ended_at: str | None = None
    tenant: str
    department: str
    user: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    model: str | None = None
    request_model: str
    response_model: str | None = None
    operation: str
    source: str
    stream: bool = False
    status: str
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    done_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    token_source: str = "reported"
    cost: str
    cost_parts: _Parts
    currency: str
    unpriced: bool = False
    price_rule_id: int | None = None
    durations_ns: _Durations = _Durations()
    duration_source: str | None = None
    upstream_host: str
    trace_id: str
    otel_span_id: str
    prompt: str | None = None
    reply: str | None = None


_DECODER = msgspec.json.Decoder(_Line)
_ENCODER = msgspec.json.Encoder()
_NULL_PROMPT, _NULL_REPLY = b',"prompt":null', b',"reply":null}'
_LINE_FIELDS = frozenset(_Line.__struct_fields__)
MAX_LINE_BYTES = 64 * 2**20
"""No export line is longer (prompt and reply hold a million characters each): a longer
one is refused after this much is read, not read whole into memory."""
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_STATUSES = frozenset(Status)
_TOKEN_SOURCES = frozenset(TokenSource)
_DURATION_SOURCES = frozenset(DurationSource)

_SUB_MICROSECOND = re.compile(r"[.,][0-9]{7}")
# What a line may hold is what the ledger stores unchanged: the limits of the records
# (``make_storable``'s), refused here rather than cut, so a span comes back as it left.
_NAMES = tuple((what, TEXT_LIMITS[what]) for what in ("tenant", "department", "user"))
_TEXTS = tuple(
    (what, TEXT_LIMITS[what])
    for what in (
        "request_model", "response_model", "operation", "source", "status", "error_type",
        "done_reason", "token_source", "duration_source", "upstream_host",
    )
)  # fmt: skip
_IDS = (("trace_id", TEXT_LIMITS["trace_id"]), ("otel_span_id", TEXT_LIMITS["span_id"]))
_CONTENT = tuple((what, TEXT_LIMITS[what]) for what in ("error_message", "prompt", "reply"))
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL and lone surrogates: no backend stores them (the meter makes them U+FFFD)."""
_EARLIEST = EARLIEST
_LATEST = datetime.combine(LAST_DAY + timedelta(days=1), time(), UTC)
_COUNTS = ("input_tokens", "output_tokens")
_DURATIONS = ("total", "load", "prompt_eval", "eval", "latency", "ttft", "queue")
_DURATION_VALUES = operator.attrgetter(*_DURATIONS)
_LABELS = operator.attrgetter("currency", *(what for what, _ in (*_NAMES, *_TEXTS)))
_checked: set[tuple[str | None, ...]] = set()
"""Label tuples (currency, names, models, hosts...) already found valid: they repeat on every line.
At most :data:`_CHECKED_MOST` (a real ledger has a few thousand; a hostile import's
every line another, of names up to 255 characters, had held 250 MB)."""
_CHECKED_MOST = 10_000


_amounts: dict[str, int] = {}
"""Amounts already read: most cost parts are one of a few values (zero above all)."""


def _shown(value: str) -> str:
    """``value`` quoted for a message: a hostile line's 60 MB model name is not echoed whole."""
    if len(shown := repr(value)) <= 80:
        return shown
    cut = 80
    while len(shown := repr(value[:cut])) > 80:  # escapes: up to 10 characters each
        cut //= 2
    return f"{shown}... ({len(value):,} characters)"


def _micros(value: str, what: str) -> int:
    micros = _amounts.get(value)
    if micros is None:
        micros = _read_micros(value, what)
        if len(_amounts) >= 100_000:
            _amounts.clear()
        _amounts[value] = micros
    return micros


def _read_micros(value: str, what: str) -> int:
    whole, dot, fraction = value.partition(".")
    if not (
        dot
        and len(fraction) == 6
        and 0 < len(whole) <= 13
        and value.isascii()  # str.isdigit() takes superscripts and other scripts' digits too
        and whole.isdigit()
        and fraction.isdigit()
    ):
        raise ValueError(
            f"{what} {_shown(value)} is not an amount with six decimals, e.g. 0.031000"
        )
    micros = int(whole) * 1_000_000 + int(fraction)
    if micros > MAX_CALL_COST:
        raise ValueError(
            f"{what} {value} is more than one call can cost ({format_micros(MAX_CALL_COST)})"
        )
    return micros


def _moment(value: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} {_shown(value)} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} {_shown(value)} has no time zone; times are UTC, e.g. ...Z")
    if _SUB_MICROSECOND.search(value):  # fromisoformat() drops the digits after the sixth
        raise ValueError(f"{what} {_shown(value)} is finer than a microsecond, which ometer keeps")
    try:
        moment = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
        if _EARLIEST <= moment < _LATEST:
            return moment
    except OverflowError:  # an offset that carries it past year 1 or 9999
        pass
    raise ValueError(
        f"{what} {_shown(value)} is outside the times ometer works with ({FIRST_DAY} to {LAST_DAY} UTC)"
    )


def _check_labels(d: _Line) -> None:
    for what, limit in _NAMES:
        value = getattr(d, what)
        if value is not None and (problem := name_problem(value, limit=limit)):
            raise ValueError(f"{what} {problem}")
    for what, limit in _TEXTS:
        value = getattr(d, what)
        if value is not None and (len(value) > limit or not value.isprintable()):
            raise ValueError(f"{what} {_shown(value)} is longer than {limit} or not printable")
    if d.status not in _STATUSES:  # reports count errors, and `log --status` finds, by these
        raise ValueError(_not_one_of("status", d.status, Status))
    # `~` beside estimated tokens, and which calls' timings count in percentiles, go by these
    if d.token_source not in _TOKEN_SOURCES:
        raise ValueError(_not_one_of("token_source", d.token_source, TokenSource))
    if d.duration_source is not None and d.duration_source not in _DURATION_SOURCES:
        raise ValueError(_not_one_of("duration_source", d.duration_source, DurationSource))


def _not_one_of(what: str, value: str, known: Iterable[str]) -> str:
    return f"{what} {_shown(value)} is not one of {', '.join(known)} (a newer ometer's?)"


def _check(d: _Line) -> None:
    """Refuse what the ledger would store wrong: bad names, odd strings, impossible numbers."""
    if not _ULID.fullmatch(d.id):
        raise ValueError(f"id {_shown(d.id)} is not a span id (26 characters, Crockford base32)")
    labels = _LABELS(d)
    if labels not in _checked:
        _check_labels(d)
        if len(_checked) >= _CHECKED_MOST:
            _checked.clear()
        _checked.add(labels)
    for what, limit in _IDS:
        value = getattr(d, what)
        if len(value) > limit or not value.isprintable():
            raise ValueError(f"{what} {_shown(value)} is longer than {limit} or not printable")
    for what, limit in _CONTENT:
        value = getattr(d, what)
        if value is not None and (len(value) > limit or _UNSTORABLE.search(value)):
            raise ValueError(f"{what} is longer than {limit} or holds a NUL or lone surrogate")
    if d.tags:
        _check_tags(d.tags)
    if not (0 <= d.input_tokens <= MAX_TOKENS and 0 <= d.output_tokens <= MAX_TOKENS):
        for what in _COUNTS:
            if not 0 <= getattr(d, what) <= MAX_TOKENS:
                raise ValueError(f"{what} {getattr(d, what)} is not a count from 0 to {MAX_TOKENS}")
    for what, value in zip(_DURATIONS, _DURATION_VALUES(d.durations_ns), strict=True):
        if value is not None and not 0 <= value <= MAX_DURATION_NS:
            raise ValueError(
                f"durations_ns.{what} {value} is not from 0 to {MAX_DURATION_NS:,} ns (11 days)"
            )
    if d.http_status is not None and not 100 <= d.http_status <= 999:
        raise ValueError(f"http_status {d.http_status} is not an HTTP status (100 to 999)")
    if d.price_rule_id is not None and not 0 < d.price_rule_id < 2**31:
        raise ValueError(f"price_rule_id {d.price_rule_id} is not a price rule id")


def _check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ValueError(
                f"tag {key[:80]!r} is longer than {MAX_TAG_KEY} characters "
                f"or its value longer than {MAX_TAG_VALUE}"
            )
        if _UNSTORABLE.search(key + value):
            raise ValueError(f"tag {key[:80]!r} holds a NUL or a lone surrogate")


_LONE_SURROGATE = "a string holds a lone surrogate (\\ud800 to \\udfff), which no backend stores"


class CutShort(ValueError):
    """The line's JSON ends before its span does: as a line it is the last of a file that
    was cut short, and no fix of it gives the span back."""


def span_from_line(line: bytes) -> SpanRecord:
    """The span an export line describes; ValueError saying what is wrong otherwise."""
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"longer than {MAX_LINE_BYTES >> 20} MiB, which no export line is")
    try:
        d = _DECODER.decode(line)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    except msgspec.DecodeError as exc:
        if "surrogate" in str(exc) or lone_surrogate(line):  # "truncated", ending the line
            raise ValueError(_LONE_SURROGATE) from None
        if said := no_json_number(line, str(exc)):
            raise ValueError(said) from None
        if str(exc).startswith("Input data was truncated"):
            raise CutShort(f"not JSON: {exc}") from None
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:  # valid JSON, under a key a newer export may have added
        raise ValueError("nested too deep to read; an export line nests two levels") from None
    written = _as_written(d)  # before _span, which may fill in response_model and currency
    span = _span(d)  # first: the fields it keeps are within their limits when read again
    each_key_once(line, _LINE_FIELDS, written)
    return span


def _as_written(d: _Line) -> bytes:
    """``d`` as an export writes it: ``prompt`` and ``reply`` only when content was kept (a
    line with a reply and no prompt is not, and is read again to check it)."""
    written = _ENCODER.encode(d)
    if d.reply is None:  # the last field, and the prompt before it
        cut = len(_NULL_REPLY) + (len(_NULL_PROMPT) if d.prompt is None else 0)
        return written[:-cut] + b"}"
    return written


_ROW_DURATIONS = {
    "total_duration_ns": "total", "load_duration_ns": "load",
    "prompt_eval_duration_ns": "prompt_eval", "eval_duration_ns": "eval",
    "latency_ns": "latency", "ttft_ns": "ttft", "queue_ns": "queue",
}  # fmt: skip
_ROW_COSTS = {"cost_tokens": "tokens", "cost_compute": "compute", "cost_energy": "energy",
              "cost_fee": "fee"}  # fmt: skip
_ROW_KEYS = frozenset(_Line.__struct_fields__) - {"model", "otel_span_id", "cost", "cost_parts",
    "durations_ns"} | {"span_id", "cost_total", *_ROW_DURATIONS, *_ROW_COSTS}  # fmt: skip
_LINE_KEYS = _ROW_KEYS & frozenset(_Line.__struct_fields__)


_COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class NewerColumn(ValueError):
    """A spool line names a column as ometer names them but this ometer has none of: a
    newer ometer wrote it, not damage."""

    def __init__(self, column: str) -> None:
        super().__init__(f"{column!r} is no column of a span in this ometer (a newer one's?)")
        self.column = column


def span_from_row(row: object) -> SpanRecord:
    """The span a spool line's object (the span's columns, money in integer micro-units)
    describes, checked as strictly as an export line; ValueError saying what is wrong otherwise."""
    if not isinstance(row, dict):
        raise ValueError(f"a {type(row).__name__}, not an object with the span's columns")
    if unknown := row.keys() - _ROW_KEYS:
        first = sorted(map(str, unknown))[0]
        if all(isinstance(k, str) and _COLUMN_NAME.fullmatch(k) for k in unknown):
            try:  # a whole span beside them is not damage
                span_from_row({k: v for k, v in row.items() if k not in unknown})
            except ValueError:
                pass
            else:
                raise NewerColumn(first)
        raise ValueError(f"{first[:80]!r} is no column of a span")
    line = {k: v for k, v in row.items() if k in _LINE_KEYS}
    line["otel_span_id"] = row.get("span_id")
    line["durations_ns"] = {to: row[key] for key, to in _ROW_DURATIONS.items() if key in row}
    line["cost"] = _row_money(row, "cost_total")
    line["cost_parts"] = {to: _row_money(row, key) for key, to in _ROW_COSTS.items()}
    try:
        d = msgspec.convert(line, _Line)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    return _span(d)


def _row_money(row: dict[str, object], key: str) -> str:
    value = row.get(key)
    if type(value) is not int or not 0 <= value <= MAX_CALL_COST:
        raise ValueError(f"{key} {value!r} is not a whole number of micro-units a call can cost")
    return format_micros(value)


def _unpriced_priced(total: int, rule: int | None) -> None:
    """Refuse an unpriced call with a cost or a rule: reports would sum the cost and still
    count the call as one to price. No ometer writes one (``compute_cost(None, ...)``)."""
    if total:
        raise ValueError(
            f'"unpriced": true with a cost of {format_micros(total)}: a call no price rule '
            "priced costs 0 in every part (cost and cost_parts)"
        )
    raise ValueError(
        f'"unpriced": true with price_rule_id {rule}: a call no price rule priced names none'
    )


def _span(d: _Line) -> SpanRecord:
    if d.response_model is None and d.model is not None and d.model != d.request_model:
        d.response_model = d.model  # an export from before response_model was its own key
    if not _CURRENCY.fullmatch(d.currency):  # 'usd' is USD, as rules and budgets take it
        d.currency = parse_currency(d.currency)
    _check(d)
    started = _moment(d.started_at, "started_at")
    ended = None if d.ended_at is None else _moment(d.ended_at, "ended_at")
    if ended is not None and ended < started:
        raise ValueError(f"ended_at {d.ended_at} is before started_at {d.started_at}")
    durations, parts = d.durations_ns, d.cost_parts
    tokens = _micros(parts.tokens, "cost_parts.tokens")
    compute = _micros(parts.compute, "cost_parts.compute")
    energy = _micros(parts.energy, "cost_parts.energy")
    fee = _micros(parts.fee, "cost_parts.fee")
    total = _micros(d.cost, "cost")
    if total != tokens + compute + energy + fee:
        raise ValueError(f"cost {d.cost} is not the sum of its cost_parts")
    if d.unpriced and (total or d.price_rule_id is not None):
        _unpriced_priced(total, d.price_rule_id)
    # By position, in SpanRecord's field order: a call with 41 keywords costs twice as much.
    return SpanRecord(
        d.id,
        d.trace_id,
        d.otel_span_id,
        started,
        d.tenant,
        d.department,
        d.source,
        d.operation,
        d.upstream_host,
        d.request_model,
        d.stream,
        d.currency,
        d.user,
        d.tags,
        ended,
        d.response_model,
        d.status,
        d.error_type,
        d.error_message,
        d.http_status,
        d.done_reason,
        d.input_tokens,
        d.output_tokens,
        d.token_source,
        durations.total,
        durations.load,
        durations.prompt_eval,
        durations.eval,
        d.duration_source,
        durations.latency,
        durations.ttft,
        durations.queue,
        tokens,
        compute,
        energy,
        fee,
        total,
        d.price_rule_id,
        d.unpriced,
        d.prompt,
        d.reply,
    )
