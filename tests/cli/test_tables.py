"""Tables on a narrow terminal: names give way, headings fold, numbers stay whole."""

from __future__ import annotations

import io
from decimal import Decimal

from hypothesis import given, strategies as st
from rich.bar import Bar
from rich.console import Console

from ollama_meter.cli._common import Column, table

HEADINGS = ["calls", "errors", "in tok", "out tok", "GPU s", "cost USD"]
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=14)
COUNTS = st.integers(min_value=0, max_value=99_999).map(lambda n: f"{n:,}")
GPU = st.decimals(min_value=Decimal(0), max_value=Decimal(999), places=1).map(str)
COST = st.decimals(min_value=Decimal(0), max_value=Decimal(99), places=6).map(str)
ROW = st.tuples(NAMES, COUNTS, COUNTS, COUNTS, COUNTS, GPU, COST)


def rendered(columns: list[Column], rows: list[list[str]], width: int) -> str:
    console = Console(width=width, color_system=None, file=io.StringIO(), soft_wrap=True)
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


@given(
    rows=st.lists(ROW, min_size=1, max_size=4),
    times=st.integers(min_value=1, max_value=3),
    width=st.integers(min_value=24, max_value=160),
)
def test_a_table_too_wide_for_the_terminal_still_shows_every_number_whole(
    rows: list[tuple[str, ...]], times: int, width: int
) -> None:
    """At 80 columns `ometer perf` (17 columns) showed a p95 of 2,000.0 as `2,` over `00`
    over `0.` over `0`, and at 24 `ometer log` an empty grid, every cell blank: when the grid
    cannot keep its numbers whole, each row is shown as its headings and values instead."""
    cells = [[row[0], *(row[1:] * times)] for row in rows]
    columns = [Column("department"), *(Column(h, numeric=True) for h in HEADINGS * times)]
    text = rendered(columns, cells, width)
    for row in cells:
        for value in row[1:]:
            assert value in text, (value, width, text)
    assert max(len(line) for line in text.splitlines()) <= width


def test_a_row_shown_as_a_record_keeps_its_headings_and_footer_but_no_drawing() -> None:
    columns = [Column("model", footer="total"), *(Column(h, numeric=True) for h in HEADINGS)]
    columns[-1] = Column("cost USD", numeric=True, footer="0.000326")
    columns.append(Column("", width=10))  # a budget's bar
    row = ["qwen2.5:7b", "1", "0", "2", "18", "0.3", "0.000326", Bar(100, 0, 3)]
    text = rendered(columns, [row], 30)
    assert " ".join(text.split()) == (
        "spend model: qwen2.5:7b calls: 1 errors: 0 in tok: 2 out tok: 18 GPU s: 0.3 "
        "cost USD: 0.000326 model: total cost USD: 0.000326"
    )
