"""CSV cells are safe to open in a spreadsheet, whatever a caller put in a name (issue 9 item 4).

Also where the spreadsheet splits on another character than the comma: Excel opens a ``.csv``
with the locale's list separator (``;`` in Germany, France, Italy...), and LibreOffice's import
offers tab and semicolon beside the comma. There the ``,``-quoting means nothing (a quote that
does not open a field is a letter), so ``x;=1+1`` in a model's name is a cell ``=1+1``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.reports import to_csv
from tests.factories import make_span

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
BREAK = re.compile(r"\r\n|\r|\n")
OTHER_SEPARATORS = re.compile(r"[;\t]")
"""What a spreadsheet may split a line on besides the comma: each piece is a cell to it."""
SPACES = " \u00a0\u2003\u3000\u200b\ufeff\x0b\x0c"
"""Blanks a spreadsheet may trim from a cell before it looks for a formula (Google Sheets,
LibreOffice's "trim spaces"): an ordinary space, no-break, em and ideographic spaces, the
invisible zero-width space and byte order mark, vertical tab and form feed."""
HOSTILE = [
    'x\r=HYPERLINK("http://evil.example","x")',
    "ok\n+1+1",
    "a\r\n@SUM(A1)",
    "=1+1",
    "\r=cmd|' /C calc'!A0",
    "-2",
    "\t=1",
    "plain",
    ' =HYPERLINK("http://evil.example","x")',
    "x; \u00a0@SUM(A1)",
    'x;=HYPERLINK("http://evil.example","x")',
    "a\t@SUM(A1)",
    'b;"=1+1',
    "x;=SUM(A1)",
    "x; @SUM(A1)",
]
"""Model names: a report shows each as the one name it counts under (``counted_model``: lower
case, ``:latest`` when untagged, blanks around it gone, a control character U+FFFD)."""


def assert_safe(text: str) -> list[list[str]]:
    """Every cell, read back with ``csv``, has no line that a spreadsheet would run."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    for row in rows:
        for cell in row:
            for line in BREAK.split(cell):
                assert not line.lstrip(SPACES).startswith(TRIGGERS), (cell, line)
    # No physical line of the file starts a formula either (a reader that splits on \r), nor
    # any piece of one a reader splitting on ';' or tab makes (quotes or not: a '"' that does
    # not open a field is a letter to it, and one that does may open it on '=').
    for line in BREAK.split(text):
        for piece in OTHER_SEPARATORS.split(line):
            assert not piece.lstrip('"' + SPACES).startswith(TRIGGERS[:4]), (line, piece)
    # A cell holding a line break is quoted.
    for cell in (c for row in rows for c in row if BREAK.search(c)):
        assert '"' + cell.replace('"', '""') + '"' in text
    return rows


@given(
    st.lists(
        st.text(alphabet=st.sampled_from("=+-@\t\r\n\"',;ab1 " + SPACES), max_size=12), max_size=6
    )
)
def test_every_cell_reads_back_safe_and_only_gains_quotes(cells: list[str]) -> None:
    columns = [f"c{i}" for i in range(len(cells))]
    text = to_csv(columns, [dict(zip(columns, cells, strict=True))])
    assert text.endswith("\n") and not text.endswith("\r\n")
    rows = assert_safe(text)
    assert rows[0] == columns
    for original, cell in zip(cells, rows[1] if cells else [], strict=True):
        # Neutralising only adds a ' before lines that would run; nothing else changes.
        assert cell.replace("'", "") == original.replace("'", "")


@pytest.mark.parametrize("command", ["report", "perf"])
def test_reports_written_by_the_cli_are_safe(cli, sqlite_url: str, command: str) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(sqlite_url)
    moment = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record([make_span(request_model=name, started_at=moment) for name in HOSTILE])
    done = cli(
        command, "--db", sqlite_url, "--period", "2026-11", "--by", "model", "--format", "csv",
        "--out", "out.csv",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    with open("out.csv", encoding="utf-8", newline="") as file:
        text = file.read()
    rows = assert_safe(text)
    models = {row[0] for row in rows[1:]}
    assert {"'=1+1:latest", "'-2:latest", "'=1:latest", "x;'=sum(a1):latest"} <= models
    # Blanks before the formula hide it from no spreadsheet that trims them.
    assert "x;' @sum(a1):latest" in models
