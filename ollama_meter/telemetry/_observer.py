"""The telemetry observer: one OTel CLIENT span and the GenAI metrics per metered call.

It starts the OTel span when the call opens, so the ledger row carries the
same trace and span ids, and ends it with the measured usage, cost and status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.metrics import Meter as OtelMeter
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ollama_meter._forks import ChildLock
from ollama_meter._names import CLIENT_SPAN_TAG
from ollama_meter.records import (
    NO_HOST,
    Asked,
    SpanRecord,
    Status as SpanStatus,
    exported_json,
    format_micros,
    printable,
    storable_text,
)
from ollama_meter.telemetry import _semconv as sc
from ollama_meter.telemetry._content import (
    MAX_EXPORTED_TEXT,
    bounded as _bounded,
    input_of,
    replied,
    reply_of,
)
from ollama_meter.telemetry._hooked import HookedAttributes
from ollama_meter.telemetry._served import Served
from ollama_meter.telemetry._size import value_bytes
from ollama_meter.telemetry._traced import parent_context, traced

log = logging.getLogger("ollama_meter.telemetry")

MAX_HOOKED_BYTES = 80 * 1024
"""A hook's attributes on one span, together, in bytes once encoded: room for one text at
its bound in any script (4 bytes a character at most in UTF-8)."""
_MAX_KEY = 255
LANGFUSE_MAX_TAG = 200
"""Characters of a Langfuse tag: it drops a longer one without a word."""
MAX_EXPORTED_ITEMS = 128
"""Items an exported list or map holds, at every level of it together (the rest left out)."""
_MAX_DEPTH = 16


def exportable(attributes: dict[str, Any]) -> dict[str, Any]:
    """``attributes`` as OTLP carries them: no lone surrogate, no value past its bounds.

    Values come from callers, Ollama and hooks. Protobuf cannot encode a lone surrogate,
    and one such text fails the whole batch it is exported in, other calls' spans with it.
    """
    return {storable_text(str(key), _MAX_KEY): _value(value) for key, value in attributes.items()}


_INT64 = range(-(2**63), 2**63)


class _Room:
    """What is left of one attribute value's bounds: its text, bytes and items together."""

    def __init__(self) -> None:
        self.chars = MAX_EXPORTED_TEXT
        self.items = MAX_EXPORTED_ITEMS


def _value(value: Any, room: _Room | None = None, depth: int = 0) -> Any:
    """``value`` as OTLP carries it, within ``room``: a hook may set a map or bytes too.

    The SDK keeps maps and bytes whole, and the encoder drops, without a word, a map holding
    a text or an integer it cannot encode; a map nested thousands deep raised RecursionError
    and the call's span was never exported.
    """
    room = room or _Room()
    if isinstance(value, str):
        return _text(value, room)
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int):
        # OTLP carries 64-bit integers: the encoder dropped a bigger one, silently.
        return value if value in _INT64 else _text(str(value), room)
    if isinstance(value, bytes | bytearray):
        kept = bytes(value[: room.chars])
        room.chars -= len(kept)  # never below 0: a slice to a negative end keeps bytes
        return kept
    if isinstance(value, list | tuple | Mapping):
        if depth >= _MAX_DEPTH:
            return _text("…", room)
        items = list(value.items() if isinstance(value, Mapping) else value)[: room.items]
        room.items -= len(items)
        if isinstance(value, Mapping):
            return {storable_text(str(k), _MAX_KEY): _value(v, room, depth + 1) for k, v in items}
        return [_value(item, room, depth + 1) for item in items]
    try:  # no OTLP type (Decimal, a set, an object): its text, as the SDK would (or drop it)
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _text(text, room)


def _text(text: str, room: _Room) -> str:
    kept = _bounded(text, max(room.chars, 1))  # no room left: "…" says something was here
    room.chars = max(room.chars - len(kept), 0)
    return kept


_JSON_VALUED = (sc.LANGFUSE_USAGE, sc.LANGFUSE_COST)
"""Short JSON values: whole within any length limit but a tiny one, which leaves them out."""


def _server(span: SpanRecord) -> dict[str, Any]:
    """``server.address`` and, when the URL names one, ``server.port`` of the Ollama server;
    nothing for a call sent to no server (refused, or gone while it waited)."""
    if span.upstream_host == NO_HOST:
        return {}
    address = urlsplit(span.upstream_host)
    server: dict[str, Any] = {sc.SERVER_ADDRESS: address.hostname or ""}
    with contextlib.suppress(ValueError):  # a port out of range: none to name
        if address.port:
            server[sc.SERVER_PORT] = address.port
    return server


def _asked(span: SpanRecord) -> dict[str, Any]:
    """The settings the request set (``gen_ai.request.*``), those it set only."""
    asked = span.asked
    if not isinstance(asked, Asked):  # none set (a hook may have put anything there)
        return {}
    values = ((key, getattr(asked, name)) for name, key in sc.REQUEST_SETTINGS.items())
    return {key: list(v) if isinstance(v, tuple) else v for key, v in values if v is not None}


def _usage(span: SpanRecord) -> dict[str, int]:
    """Langfuse's usage of ``span``: an embedding's input only, as its span's (no output 0)."""
    if sc.input_only(span.operation):
        return {"input": span.input_tokens, "total": span.input_tokens}
    tokens = span.input_tokens, span.output_tokens
    return {"input": tokens[0], "output": tokens[1], "total": sum(tokens)}


def _finish_reason(span: SpanRecord) -> str:
    """Why the reply ended, in the conventions' words where they have one: the answer's own
    (Ollama's ``done_reason``, OpenAI's ``finish_reason``, Anthropic's ``stop_reason``...), a
    reply that stopped to call tools ``tool_call``; else ``error`` for a call that failed or
    was cut, ``stop`` for one that ended well without saying."""
    if not span.done_reason:
        return "stop" if span.status == SpanStatus.OK else "error"
    said = sc.FINISH_REASONS.get(span.done_reason, storable_text(span.done_reason, 32))
    return "tool_call" if said == "stop" and span.called else said


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _ns(span: SpanRecord, *, end: bool) -> int:
    moment = span.ended_at if end and span.ended_at is not None else span.started_at
    # Exact: timestamp() is a float, a microsecond off for one instant in fifty.
    return (moment - _EPOCH) // _MICROSECOND * 1000


def _say_failed(otel: Span, span: SpanRecord) -> None:
    """Status Error on a call that ended with an error type (the conventions: a failed
    operation has both; one its caller stopped, ``client_abort``, is one of ometer's failures);
    any other call's status is left unset."""
    if span.error_type:
        otel.set_status(Status(StatusCode.ERROR, storable_text(span.error_message or "", 500)))


class TelemetryObserver:
    def __init__(
        self, tracer: Tracer, meter: OtelMeter | None, *, capture_content: bool = False
    ) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self._live: dict[str, Span] = {}
        self._lock = ChildLock()  # a forked child gets it free, whoever held it at the fork
        limits = SpanLimits()  # what the SDK's provider reads from the environment too
        # The SDK drops a span's oldest attribute to make room for a new one past its limit.
        self.max_attributes = limits.max_span_attributes
        length = limits.max_span_attribute_length  # 0 is a limit too: every text cut to ""
        self.max_length = MAX_EXPORTED_TEXT if length is None else length
        self._said_crowded = self._said_heavy = False
        self._hooked = HookedAttributes(exportable)
        self._metrics = meter is not None
        self._served = Served()
        if meter is not None:

            def histogram(name: str, unit: str, description: str, buckets: Sequence[float]) -> Any:
                return meter.create_histogram(
                    name,
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(buckets),
                )

            seconds = sc.DURATION_BUCKETS
            self.tokens = histogram(
                sc.METRIC_TOKEN_USAGE, "{token}", "Tokens used per call.", sc.TOKEN_BUCKETS
            )
            self.duration = histogram(sc.METRIC_OPERATION_DURATION, "s", "Call duration.", seconds)
            self.first_chunk = histogram(
                sc.METRIC_TIME_TO_FIRST_CHUNK, "s", "Time to the first streamed chunk.", seconds
            )
            self.queue = histogram(
                sc.METRIC_QUEUE_DURATION,
                "s",
                "Time a call waited before it was sent: in the gateway for a free slot on a "
                "server, in the Python API for its on_start hook.",
                seconds,
            )
            self.cost = meter.create_counter(
                sc.METRIC_COST,
                unit="{micro_currency}",
                description="Cost in millionths of the currency.",
            )
            self.requests = meter.create_counter(
                sc.METRIC_REQUESTS, unit="{request}", description="Metered calls."
            )

    def _start(self, span: SpanRecord) -> Span:
        operation = sc.OPERATION_NAMES.get(span.operation, span.operation)
        # A request that named no model (refused before it was sent) has none to say: its span
        # is named by its operation alone, as the conventions name one ("chat ", a name apart).
        model = span.request_model if span.request_model.strip() else None
        attributes: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: operation,
            sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER_OLLAMA,
            **({} if model is None else {sc.GEN_AI_REQUEST_MODEL: model}),
            **_server(span),
            **_asked(span),
            sc.OMETER_TENANT: span.tenant,
            sc.OMETER_DEPARTMENT: span.department,
        }
        return self.tracer.start_span(
            storable_text(operation if model is None else f"{operation} {model}", _MAX_KEY),
            context=parent_context(span.parent),
            kind=SpanKind.CLIENT,
            start_time=_ns(span, end=False),
            attributes=exportable(attributes),
        )

    def on_start(self, span: SpanRecord) -> None:
        otel = self._start(span)
        # The ledger row and the exported span share their ids; what the call calls is told it.
        span.traced = traced(otel, span.parent)
        span.trace_id, span.span_id = span.traced.trace_id, span.traced.span_id
        with self._lock:
            self._live[span.span_id] = otel  # its OTel id: a gateway's record may rename span.id

    def on_end(self, span: SpanRecord) -> None:
        with self._lock:
            otel = self._live.pop(span.span_id, None)
        if otel is None:  # refused before it started
            otel = self._start(span)
            context = otel.get_span_context()
            span.trace_id, span.span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
        otel.set_attributes(self._with_hooks(otel, exportable(self._end_attributes(span)), span))
        _say_failed(otel, span)
        otel.end(end_time=_ns(span, end=True))
        if self._metrics:
            self._record_metrics(span)

    def on_recorded_elsewhere(self, span: SpanRecord) -> None:
        """A call a gateway recorded in this client's own ledger: the gateway exports it, with
        its cost, tokens and metrics. Its trace span here ends naming the gateway's record
        (``span.id``), with none of them: a backend summing a trace's costs counts it once, and
        Langfuse (which types a span by its model else) shows a plain span, no generation."""
        with self._lock:
            otel = self._live.pop(span.span_id, None)
        if otel is None:
            return
        said: dict[str, Any] = {sc.OMETER_RECORDED_BY: "gateway", sc.OMETER_SPAN_ID: span.id}
        said[sc.LANGFUSE_OBSERVATION_TYPE] = "span"
        said |= {sc.OMETER_STATUS: span.status, sc.ERROR_TYPE: span.error_type}
        otel.set_attributes(exportable({k: v for k, v in said.items() if v is not None}))
        _say_failed(otel, span)
        otel.end(end_time=_ns(span, end=True))

    def _end_attributes(self, span: SpanRecord) -> dict[str, Any]:
        cost = Decimal(format_micros(span.cost_total))
        attributes: dict[str, Any] = {
            sc.GEN_AI_USAGE_INPUT_TOKENS: span.input_tokens,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: span.output_tokens,
            sc.OMETER_STATUS: span.status,
            sc.OMETER_SPAN_ID: span.id,
            sc.OMETER_COST: f"{cost:f}",
            sc.OMETER_CURRENCY: span.currency,
            sc.OMETER_TOKEN_SOURCE: span.token_source,
            sc.OMETER_UNPRICED: span.unpriced,
            sc.LANGFUSE_OBSERVATION_TYPE: (
                "embedding" if sc.input_only(span.operation) else "generation"
            ),
            sc.LANGFUSE_MODEL: span.model,
            sc.LANGFUSE_USAGE: exported_json(_usage(span)),
            sc.LANGFUSE_TAGS: [
                storable_text(tag, LANGFUSE_MAX_TAG)
                for tag in (
                    f"tenant:{span.tenant}",
                    f"department:{span.department}",
                    # Not the client's span id a gateway notes: a tag of one call only
                    # would add a filter to Langfuse's list for every call.
                    *(f"{k}:{v}" for k, v in sorted(span.tags.items()) if k != CLIENT_SPAN_TAG),
                )
            ],
        }
        if span.currency == "USD" and not span.unpriced:
            # Langfuse reads any cost as USD and has no currency field: another currency's cost
            # would be summed with the dollars. An unpriced span's 0 is not a cost either; it
            # would hide Langfuse's own estimate. ometer.cost and ometer.currency carry both.
            # JSON text with the decimal itself: through a float it rounded past 2**53 micro-units.
            attributes[sc.LANGFUSE_COST] = f'{{"total": {cost:f}}}'
        if span.ttft_ns is not None:  # TTFT counts from the span's start, as Langfuse's does
            first = span.started_at + timedelta(microseconds=span.ttft_ns // 1000)
            attributes[sc.LANGFUSE_COMPLETION_START] = first.astimezone(UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            )
        # The server that served it: a gateway in front of several picks one after the span opened.
        attributes.update(_server(span))
        for part in sc.OMETER_COST_PARTS:
            attributes[f"{sc.OMETER_COST}.{part}"] = format_micros(getattr(span, f"cost_{part}"))
        if sc.input_only(span.operation):  # the conventions give it no output count
            del attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS]
        if span.response_model:
            attributes[sc.GEN_AI_RESPONSE_MODEL] = span.response_model
        if span.done_reason:
            attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = [span.done_reason]
        if isinstance(span.response_id, str) and span.response_id:  # a hook may set anything
            attributes[sc.GEN_AI_RESPONSE_ID] = printable(
                _bounded(span.response_id, sc.MAX_RESPONSE_ID)
            )
        if type(span.dimensions) is int and span.dimensions > 0:  # a hook may set anything
            attributes[sc.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = span.dimensions
        if span.user:
            attributes[sc.OMETER_USER] = span.user
            attributes[sc.USER_ID] = span.user
        if span.error_type:
            attributes[sc.ERROR_TYPE] = span.error_type
        if self.capture_content and span.prompt is not None:
            said, apart = input_of(span, self.max_length)
            attributes[sc.GEN_AI_INPUT_MESSAGES] = said
            attributes[sc.GEN_AI_SYSTEM_INSTRUCTIONS] = apart
        if self.capture_content and replied(span):
            reason = _finish_reason(span)
            attributes[sc.GEN_AI_OUTPUT_MESSAGES] = reply_of(span, self.max_length, reason)
        for key in _JSON_VALUED:
            if len(attributes.get(key) or "") > self.max_length:
                del attributes[key]
        return {key: value for key, value in attributes.items() if value is not None}

    def _with_hooks(self, otel: Span, ours: dict[str, Any], span: SpanRecord) -> dict[str, Any]:
        """``ours`` and the hooks' attributes, as many of the hooks' as the span has room for.

        Past its limit the SDK drops the oldest attribute for each new one: ometer's own, set
        first. A hook's never replace ours (:mod:`._hooked`); they go in the order it set them
        while there is room, in number and in :data:`MAX_HOOKED_BYTES`, and what is left is
        said once.
        """
        present = set(getattr(otel, "attributes", None) or ()) | set(ours)
        hooked = self._hooked.kept(span.attributes, present) if span.attributes else {}
        if not hooked:
            return ours
        room = len(hooked) if self.max_attributes is None else self.max_attributes - len(present)
        space = MAX_HOOKED_BYTES
        attributes = dict(ours)
        left = 0
        heavy: list[str] = []
        for key, value in hooked.items():
            size = value_bytes(key) + value_bytes(value)
            if room > 0 and size <= space:
                room, space = room - 1, space - size
                attributes[key] = value
            elif room > 0:
                heavy.append(key)
            else:
                left += 1
        if heavy and not self._said_heavy:
            self._said_heavy = True
            shown = ", ".join(heavy[:5]) + (
                f" and {len(heavy) - 5:,} more" if len(heavy) > 5 else ""
            )
            log.warning(
                "a hook set attributes on a span past the %d KiB of them it exports (spans wait "
                "in memory for a collector, which takes 4 MiB an export); %s not exported; "
                "said once",
                MAX_HOOKED_BYTES // 1024,
                shown,
            )
        if left and not self._said_crowded:
            self._said_crowded = True
            log.warning(
                "a hook set %d attributes on a span; %d not exported, past the %d a span "
                "holds (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT); said once",
                len(hooked),
                left,
                self.max_attributes,
            )
        return attributes

    def _record_metrics(self, span: SpanRecord) -> None:
        # A name no server answered for (made up by a caller) is no label of its own (_served)
        base: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_NAMES.get(span.operation, span.operation),
            sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER_OLLAMA,
            sc.GEN_AI_REQUEST_MODEL: self._served.label(span, span.request_model),
            **_server(span),  # recommended on the GenAI metrics too
        }
        if span.response_model:
            base[sc.GEN_AI_RESPONSE_MODEL] = span.response_model
        if span.error_type:
            base[sc.ERROR_TYPE] = span.error_type
        # Labels go through the spans' cleaning: a hook may have rewritten span.tenant or a
        # model into text UTF-8 cannot encode, and the encoder dropped such a label silently.
        if span.status == SpanStatus.OK:
            counts = [(sc.TOKEN_INPUT, span.input_tokens), (sc.TOKEN_OUTPUT, span.output_tokens)]
            if sc.input_only(span.operation):  # an embedding: input only
                counts = counts[:1]
            for kind, count in counts:
                self.tokens.record(count, exportable({**base, sc.GEN_AI_TOKEN_TYPE: kind}))
        base = exportable(base)
        if span.latency_ns is not None:
            self.duration.record(span.latency_ns / 1e9, base)
        if span.ttft_ns is not None:
            self.first_chunk.record(span.ttft_ns / 1e9, base)
        who = {
            sc.OMETER_TENANT: span.tenant,
            sc.OMETER_DEPARTMENT: span.department,
            sc.GEN_AI_REQUEST_MODEL: self._served.label(span, span.model),
        }
        self.cost.add(span.cost_total, exportable({**who, sc.OMETER_CURRENCY: span.currency}))
        if span.queue_ns is not None:
            departments = {sc.OMETER_TENANT: span.tenant, sc.OMETER_DEPARTMENT: span.department}
            self.queue.record(span.queue_ns / 1e9, exportable(departments))
        self.requests.add(1, exportable({**who, sc.OMETER_STATUS: span.status}))
