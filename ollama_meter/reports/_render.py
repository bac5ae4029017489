"""Rendering report rows and spans as CSV and JSON: exact money as decimal strings.

A span's JSON (:func:`span_to_dict`) is the ledger's export format, defined there.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from ollama_meter.ledger._transfer import iso_utc, span_to_dict
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


__all__ = ["iso_utc", "safe_cell", "span_to_dict", "to_csv", "to_json"]
