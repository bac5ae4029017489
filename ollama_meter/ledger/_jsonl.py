"""Spans in and out of a ledger as JSON lines: ``ometer db export`` and ``import``.

A span's JSON is what ``ometer log --json`` shows (:func:`span_to_dict`), one
object per line; import reads the same lines back into the same span, checks
every field (a bad line is refused with its number, never stored half-right),
and records them through the ordinary write path: idempotent by id, rollups
included.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from ollama_meter._names import name_problem
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._meta import pruned_before
from ollama_meter.ledger._spans import SpanFilter, insert_spans, row_to_span, select_spans
from ollama_meter.ledger._types import from_us
from ollama_meter.ledger.models import SpanRow
from ollama_meter.periods import FIRST_DAY, LAST_DAY
from ollama_meter.records import (
    LABEL_FIELDS,
    MAX_CALL_COST,
    MAX_DURATION_NS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TOKENS,
    TEXT_LIMITS,
    SpanRecord,
    format_micros,
    make_storable,
)

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def span_to_dict(span: SpanRecord) -> dict[str, Any]:
    """A span as ``ometer log --json`` prints it: times in UTC ISO 8601, money as strings.

    ``prompt`` and ``reply`` appear only when content capture stored them.
    """
    data = {
        "id": span.id,
        "started_at": iso_utc(span.started_at),
        "ended_at": iso_utc(span.ended_at) if span.ended_at else None,
        "tenant": span.tenant,
        "department": span.department,
        "user": span.user,
        "tags": span.tags,
        "model": span.model,
        "request_model": span.request_model,
        "response_model": span.response_model,
        "operation": span.operation,
        "source": span.source,
        "stream": span.stream,
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "http_status": span.http_status,
        "done_reason": span.done_reason,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "token_source": span.token_source,
        "cost": format_micros(span.cost_total),
        "cost_parts": {
            "tokens": format_micros(span.cost_tokens),
            "compute": format_micros(span.cost_compute),
            "energy": format_micros(span.cost_energy),
            "fee": format_micros(span.cost_fee),
        },
        "currency": span.currency,
        "unpriced": span.unpriced,
        "price_rule_id": span.price_rule_id,
        "durations_ns": span.durations(),
        "duration_source": span.duration_source,
        "upstream_host": span.upstream_host,
        "trace_id": span.trace_id,
        "otel_span_id": span.span_id,
    }
    for key in ("prompt", "reply"):
        if (content := getattr(span, key)) is not None:
            data[key] = content
    return data


# -- export ------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_LABEL_VALUES = operator.attrgetter(*sorted(LABEL_FIELDS))


def export_lines(
    ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None
) -> Iterator[bytes]:
    """Every span started in [since, until) as one JSON line each, oldest first.

    One read transaction streams them (a consistent snapshot, however long it takes;
    writers are not blocked). A span an older ometer kept with, say, an escape in its
    model name is given as the meter stores spans today (``make_storable``), so it still
    imports.
    """
    where = SpanFilter(since=since, until=until)
    order = SpanRow.id if since is None and until is None else SpanRow.started_at
    query = select_spans().where(*where.clauses()).order_by(order)
    with ledger.read() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
        for row in result:
            span = row_to_span(row)
            if not "".join(filter(None, _LABEL_VALUES(span))).isprintable():
                make_storable(span)
            yield _ENCODER.encode(span_to_dict(span)) + b"\n"


# -- import ------------------------------------------------------------------------------


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


class _Line(msgspec.Struct, gc=False):
    """One exported span. Unknown keys are ignored: a newer export still imports."""

    id: str
    started_at: str
    tenant: str
    department: str
    request_model: str
    operation: str
    source: str
    status: str
    cost: str
    cost_parts: _Parts
    currency: str
    upstream_host: str
    trace_id: str
    otel_span_id: str
    stream: bool = False
    ended_at: str | None = None
    user: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    model: str | None = None
    response_model: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    done_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    token_source: str = "reported"
    unpriced: bool = False
    price_rule_id: int | None = None
    durations_ns: _Durations = _Durations()
    duration_source: str | None = None
    prompt: str | None = None
    reply: str | None = None


_DECODER = msgspec.json.Decoder(_Line)
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_CURRENCY = re.compile(r"[A-Z]{3}")
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
_EARLIEST = datetime.combine(FIRST_DAY, time(), UTC)
_LATEST = datetime.combine(LAST_DAY + timedelta(days=1), time(), UTC)
_COUNTS = ("input_tokens", "output_tokens")
_DURATIONS = ("total", "load", "prompt_eval", "eval", "latency", "ttft", "queue")
_DURATION_VALUES = operator.attrgetter(*_DURATIONS)
_LABELS = operator.attrgetter("currency", *(what for what, _ in (*_NAMES, *_TEXTS)))
_checked: set[tuple[str | None, ...]] = set()
"""Label tuples (currency, names, models, hosts...) already found valid: they repeat on every line."""


_amounts: dict[str, int] = {}
"""Amounts already read: most cost parts are one of a few values (zero above all)."""


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
        raise ValueError(f"{what} {value!r} is not an amount with six decimals, e.g. 0.031000")
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
        raise ValueError(f"{what} {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} {value!r} has no time zone; times are UTC, e.g. ...Z")
    try:
        moment = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
        if _EARLIEST <= moment < _LATEST:
            return moment
    except OverflowError:  # an offset that carries it past year 1 or 9999
        pass
    raise ValueError(
        f"{what} {value!r} is outside the times ometer works with ({FIRST_DAY} to {LAST_DAY} UTC)"
    )


def _check_labels(d: _Line) -> None:
    for what, limit in _NAMES:
        value = getattr(d, what)
        if value is not None and (problem := name_problem(value, limit=limit)):
            raise ValueError(f"{what} {problem}")
    for what, limit in _TEXTS:
        value = getattr(d, what)
        if value is not None and (len(value) > limit or not value.isprintable()):
            raise ValueError(f"{what} {value!r} is longer than {limit} or not printable")
    if not _CURRENCY.fullmatch(d.currency):
        raise ValueError(f"currency {d.currency!r} is not a 3-letter code like USD")


def _check(d: _Line) -> None:
    """Refuse what the ledger would store wrong: bad names, odd strings, impossible numbers."""
    if not _ULID.fullmatch(d.id):
        raise ValueError(f"id {d.id!r} is not a span id (26 characters, Crockford base32)")
    labels = _LABELS(d)
    if labels not in _checked:
        _check_labels(d)
        if len(_checked) >= 100_000:
            _checked.clear()
        _checked.add(labels)
    for what, limit in _IDS:
        value = getattr(d, what)
        if len(value) > limit or not value.isprintable():
            raise ValueError(f"{what} {value!r} is longer than {limit} or not printable")
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


def span_from_line(line: bytes) -> SpanRecord:
    """The span an export line describes; ValueError saying what is wrong otherwise."""
    try:
        d = _DECODER.decode(line)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if d.response_model is None and d.model is not None and d.model != d.request_model:
        d.response_model = d.model  # an export from before response_model was its own key
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


@dataclass
class ImportSummary:
    read: int = 0
    added: int = 0
    pruned: int = 0
    """Spans skipped because they started before the prune horizon (see :func:`import_lines`)."""
    horizon: datetime | None = None

    @property
    def present(self) -> int:
        """Spans the ledger already had (an import run again, or lines given twice)."""
        return self.read - self.added - self.pruned


def import_lines(
    ledger: Ledger,
    lines: Iterable[bytes],
    *,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
    pruned_too: bool = False,
) -> ImportSummary:
    """Record the spans of export ``lines``; spans already in the ledger are skipped.

    So are spans that started before the prune horizon, unless ``pruned_too``: the
    ledger no longer has the raw spans of those days, only their rollups, so it cannot
    tell whether a span there is one it pruned (counted already: an export imported
    back) or one it never had (another ledger's).

    Each batch is one transaction (spans and rollups together). A bad line stops the
    import with its number; what came before it is recorded, so the same command
    runs again after the line is fixed.
    """
    summary = ImportSummary()
    pending: list[SpanRecord] = []

    def flush() -> None:
        if pending:
            try:
                with ledger.write() as conn:
                    fresh = pending
                    horizon = None if pruned_too else pruned_before(conn)
                    if horizon is not None:
                        cutoff = from_us(horizon)
                        fresh = [span for span in pending if span.started_at >= cutoff]
                        summary.pruned += len(pending) - len(fresh)
                        summary.horizon = cutoff
                    summary.added += len(insert_spans(conn, fresh))
            except LedgerError as exc:  # the batch is rolled back whole: running again is safe
                raise LedgerError(
                    f"{exc}; the {summary.read:,} span(s) before this batch are recorded: run "
                    "the same import again once it answers (spans already there are skipped)"
                ) from exc
            summary.read += len(pending)
            if progress is not None:
                progress(len(pending))
            pending.clear()

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            pending.append(span_from_line(line))
        except ValueError as exc:
            flush()
            raise ValidationError(
                f"line {number}: {exc}; the {summary.read} span(s) before it are recorded, "
                "fix the line and import again (spans already there are skipped)"
            ) from None
        if len(pending) >= batch:
            flush()
    flush()
    return summary
