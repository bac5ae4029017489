"""Rendering report rows and spans as CSV and JSON: exact money as decimal strings."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from ollama_meter.meter.span import SpanRecord
from ollama_meter.pricing import format_micros

MONEY_KEYS = frozenset({"cost", "usage_cost", "fixed_cost_share", "total_cost"})
# A line starting with one of these is a formula to a spreadsheet; so is one starting
# after a line break inside a cell, which some read as a new row.
_FORMULA_LINE = re.compile(r"(^|\r\n|\r|\n)(?=[=+\-@\t\r])")


def safe_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (CSV injection).

    Every line of the cell that starts with ``= + - @``, a tab or a carriage return
    gets a leading ``'``, the first line and each one after a line break alike.
    """
    return _FORMULA_LINE.sub(lambda m: m.group(1) + "'", value)


class _Spreadsheet(csv.excel):
    # The csv module quotes a cell holding the terminator's characters: "\r\n" makes it
    # quote both kinds of line break. Rows still end in "\n" (see to_csv).
    lineterminator = "\r\n"


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
    """RFC 4180 CSV with ``\\n`` line ends; the same rows always give the same bytes.

    A cell with a line break of any kind is quoted (the csv module quotes only the
    line terminator's own characters, and would leave a bare ``\\r`` unquoted).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, dialect=_Spreadsheet)

    def line(cells: Sequence[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()[:-2] + "\n"  # the row's own "\r\n", never one inside quotes

    lines = [line(columns)]
    lines.extend(line([_cell(key, row.get(key)) for key in columns]) for row in rows)
    return "".join(lines)


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
