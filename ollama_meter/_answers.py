"""The answers the Python API hands back: the ``ollama`` client's response objects, each as
its subclass carrying ``meter`` (:class:`MeterInfo`, what the meter recorded of the call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ollama
from pydantic import Field

from ollama_meter.meter import Run, SpanRecord
from ollama_meter.pricing import from_micros
from ollama_meter.records import record_from


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What the meter recorded for a call: ids, tokens, exact cost and its parts, timings."""

    id: str
    """The ledger's id of the call: what ``ometer log`` shows (also :attr:`span_id`)."""
    trace_id: str
    otel_span_id: str
    """The OpenTelemetry span id, as exported; not the ledger's id."""
    status: str
    input_tokens: int
    output_tokens: int
    token_source: str
    cost: Decimal
    currency: str
    unpriced: bool
    cost_parts: dict[str, Decimal] = field(default_factory=dict)
    durations_ns: dict[str, int | None] = field(default_factory=dict)
    duration_source: str | None = None
    """``reported`` (Ollama's own timing) or ``measured`` (the meter's clock, where Ollama gave none)."""
    recorded_by: str | None = None
    """The ``ometer`` gateway (its address) that recorded the call in this client's own ledger:
    its span, :attr:`id`, is the call's one record, and this client wrote none. None when
    the client recorded the call itself."""

    @property
    def span_id(self) -> str:
        """The ledger's id of the call, as ``ometer chat --json`` names it: :attr:`id`.

        Not ``SpanRecord.span_id``, which is the OpenTelemetry span id (:attr:`otel_span_id`).
        """
        return self.id

    @classmethod
    def of(cls, span: SpanRecord, *, recorded_by: str | None = None) -> MeterInfo:
        return record_from(
            cls,
            span,
            recorded_by=recorded_by,
            otel_span_id=span.span_id,
            cost=from_micros(span.cost_total),
            cost_parts={
                part: from_micros(getattr(span, f"cost_{part}"))
                for part in ("tokens", "compute", "energy", "fee")
            },
            durations_ns=span.durations(),
        )


class MeteredChatResponse(ollama.ChatResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


class MeteredGenerateResponse(ollama.GenerateResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


class MeteredEmbedResponse(ollama.EmbedResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


class MeteredEmbeddingsResponse(ollama.EmbeddingsResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


_METERED: dict[type, type[Any]] = {
    ollama.ChatResponse: MeteredChatResponse,
    ollama.GenerateResponse: MeteredGenerateResponse,
    ollama.EmbedResponse: MeteredEmbedResponse,
    ollama.EmbeddingsResponse: MeteredEmbeddingsResponse,
}


def with_meter(response: Any, run: Run) -> Any:
    """The same response, as its metered subclass carrying ``meter``."""
    cls = _METERED[type(response)]
    values = {name: getattr(response, name) for name in type(response).model_fields}
    meter = MeterInfo.of(run.span, recorded_by=run.recorded_by)
    # set, so read by key too (``r["meter"]``): the ollama client's answers read a field unset
    # and None as absent; ``exclude`` keeps it out of model_dump all the same
    fields = {*response.model_fields_set, "meter"}
    return cls.model_construct(_fields_set=fields, meter=meter, **values)
