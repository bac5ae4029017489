"""Tables on a narrow terminal: names give way, headings fold, numbers stay whole."""

from __future__ import annotations

import io
from decimal import Decimal

from hypothesis import given, strategies as st
from rich.console import Console

from ollama_meter.cli._common import Column, table

HEADINGS = ["calls", "errors", "in tok", "out tok", "GPU s", "cost USD"]
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=14)
COUNTS = st.integers(min_value=0, max_value=99_999).map(lambda n: f"{n:,}")
GPU = st.decimals(min_value=Decimal(0), max_value=Decimal(999), places=1).map(str)
COST = st.decimals(min_value=Decimal(0), max_value=Decimal(99), places=6).map(str)
ROW = st.tuples(NAMES, COUNTS, COUNTS, COUNTS, COUNTS, GPU, COST)


def rendered(columns: list[Column], rows: list[list[str]], width: int) -> str:
    console = Console(width=width, color_system=None, file=io.StringIO())
    console.print(table("spend", columns, rows))
    return console.file.getvalue()  # type: ignore[attr-defined]


@given(
    rows=st.lists(ROW, min_size=1, max_size=6),
    extra=st.integers(min_value=0, max_value=80),
)
def test_a_number_is_never_split_while_the_headings_can_fold_instead(
    rows: list[tuple[str, ...]], extra: int
) -> None:
    """At 50 columns a report's cost 0.001038 showed as `0.0010` over `38`: the columns
    kept the width of their headings' words (`errors`, `cost`) and money was folded first.
    Whenever every number fits whole, with names at three a line and headings folded, it is
    shown whole."""
    cells = [list(row) for row in rows]
    columns = [Column("department"), *(Column(h, numeric=True) for h in HEADINGS)]
    numbers = [max(len(row[i]) for row in cells) for i in range(1, len(columns))]
    width = 3 * len(columns) + 1 + 3 + sum(numbers) + extra
    text = rendered(columns, cells, width)
    for row in cells:
        for value in row[1:]:
            assert value in text, (value, width, text)
