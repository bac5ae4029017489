"""Rendering report rows and spans as CSV and JSON: exact money as decimal strings.

Money is told by its type (:class:`~ollama_meter.records.Micros`), never by a
column's name: six decimals, as the ledger counts it.

A span's JSON (:func:`span_to_dict`) is the ledger's export format, defined there.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from ollama_meter._text import json_text
from ollama_meter.ledger import iso_utc, span_to_dict
from ollama_meter.records import Micros, format_micros

# A cell starting with one of these is a formula to a spreadsheet; so is a piece of one
# after a line break, which some read as a new row, or after a ';' or a tab, which Excel
# (with a ';' list separator: Germany, France...) and LibreOffice's import split cells on,
# our ','-quoting aside. Quotes before it may open that piece as a quoted field, and blanks
# before it are trimmed by Google Sheets' import and LibreOffice's "trim spaces": any
# Unicode space (no-break, ideographic...) and the invisible zero-width space and byte order
# mark. Not a tab, a trigger itself: a run of tabs (each a separator) is then not read to
# its end again from each one.
_BLANKS = r'[^\S\t\r\n]|[\u200b\ufeff"]'
_FORMULA_LINE = re.compile(rf"(^|\r\n|\r|\n|;|\t)(?=(?:{_BLANKS})*[=+\-@\t\r])")


def safe_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (CSV injection).

    Every piece of the cell that starts with ``= + - @``, a tab or a carriage return (after
    any ``"`` and blanks) gets a leading ``'``: the first, and each after a line break, ``;``
    or tab.
    """
    return _FORMULA_LINE.sub(lambda m: m.group(1) + "'", value)


class _Spreadsheet(csv.excel):
    # The csv module quotes a cell holding the terminator's characters: "\r\n" makes it
    # quote both kinds of line break. Rows still end in "\n" (see to_csv).
    lineterminator = "\r\n"


def _exact(value: object) -> str | None:
    """Money and decimals as exact text (never a float), else None."""
    if isinstance(value, Micros):
        return format_micros(value)
    if isinstance(value, Decimal):
        return f"{value:f}"
    return None


def cell_text(value: object) -> str:
    """A value as CSV (and the HTML files' tables) show it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return safe_cell(value)
    exact = _exact(value)
    return str(value) if exact is None else exact


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
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
    lines.extend(line([cell_text(row.get(key)) for key in columns]) for row in rows)
    return "".join(lines)


def _json_value(value: object) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    exact = _exact(value)
    return value if exact is None else exact


def to_json(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """A JSON list of objects with exactly ``columns`` as keys."""
    data = [{key: _json_value(row.get(key)) for key in columns} for row in rows]
    return json_text(data, indent=2) + "\n"


__all__ = ["iso_utc", "safe_cell", "span_to_dict", "to_csv", "to_json"]
