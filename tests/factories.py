"""Span records and price rules for tests that write the ledger directly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ollama_meter.meter import SpanRecord, new_span_row_id
from ollama_meter.meter.span import new_otel_span_id, new_trace_id
from ollama_meter.pricing import PriceRule


def token_prices(pattern: str = "*", **fields: Any) -> PriceRule:
    """The tests' usual token price: 1000 USD per 1M input tokens, 2000 per 1M output."""
    return PriceRule(
        pattern=pattern,
        currency="USD",
        input_per_1m=Decimal(1000),
        output_per_1m=Decimal(2000),
        **fields,
    )


def make_span(**fields: Any) -> SpanRecord:
    started = fields.pop("started_at", datetime(2026, 11, 10, 12, 0, tzinfo=UTC))
    values: dict[str, Any] = {
        "id": new_span_row_id(int(started.timestamp() * 1e9)),
        "trace_id": new_trace_id(),
        "span_id": new_otel_span_id(),
        "started_at": started,
        "tenant": "acme",
        "department": "sales",
        "source": "sdk",
        "operation": "chat",
        "upstream_host": "http://127.0.0.1:11434",
        "request_model": "llama3.1:8b",
        "stream": True,
        "currency": "USD",
        "input_tokens": 7,
        "output_tokens": 12,
        "prompt_eval_duration_ns": 1_000_000,
        "eval_duration_ns": 2_000_000,
    }
    values.update(fields)
    return SpanRecord(**values)
