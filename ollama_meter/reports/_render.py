"""Rendering report rows and spans as CSV and JSON: exact money as decimal strings."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from ollama_meter.meter.span import SpanRecord
from ollama_meter.pricing import format_micros

MONEY_KEYS = frozenset({"cost", "usage_cost", "fixed_cost_share", "total_cost"})
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (CSV injection)."""
    if value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _cell(key: str, value: object) -> str:
    if value is None:
        return ""
    if key in MONEY_KEYS and isinstance(value, int):
        return format_micros(value)
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, str):
        return safe_cell(value)
    return str(value)


def to_csv(columns: Sequence[str], rows: Iterable[dict[str, object]]) -> str:
    """RFC 4180 CSV with ``\\n`` line ends; the same rows always give the same bytes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(key, row.get(key)) for key in columns])
    return out.getvalue()


def _json_value(key: str, value: object) -> Any:
    if key in MONEY_KEYS and isinstance(value, int):
        return format_micros(value)
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return iso_utc(value)
    return value


def to_json(columns: Sequence[str], rows: Iterable[dict[str, object]]) -> str:
    """A JSON list of objects with exactly ``columns`` as keys."""
    data = [{key: _json_value(key, row.get(key)) for key in columns} for row in rows]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def span_to_dict(span: SpanRecord) -> dict[str, Any]:
    """A span as ``ometer log --json`` prints it: times in UTC ISO 8601, money as strings."""
    return {
        "id": span.id,
        "started_at": iso_utc(span.started_at),
        "ended_at": iso_utc(span.ended_at) if span.ended_at else None,
        "tenant": span.tenant,
        "department": span.department,
        "user": span.user,
        "tags": span.tags,
        "model": span.model,
        "request_model": span.request_model,
        "operation": span.operation,
        "source": span.source,
        "stream": span.stream,
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "http_status": span.http_status,
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
