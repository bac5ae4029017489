"""Tables of data for the terminal: laid out to its width, and never a number cut in two.

Cells are shown as text (:func:`~ollama_meter.cli._console.shown`): data is never read as
markup, and control characters are replaced before they reach the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from ollama_meter.cli._console import shown


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :func:`table`."""

    heading: str
    numeric: bool = False
    """Numbers, money, times: right-aligned, and the last to wrap (never inside a word)."""
    footer: str = ""
    width: int | None = None
    """A fixed width, for a cell that is not text (a bar)."""


class DataTable:
    """A table laid out for the terminal it is printed on; see :func:`table`."""

    def __init__(
        self,
        title: str,
        columns: Sequence[Column],
        rows: Iterable[Sequence[object]],
        caption: str | Text | None,
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[Any]] = [
            [shown(c) if isinstance(c, str | Text) else c for c in row] for row in rows
        ]
        self.caption = caption

    def _sizes(self, index: int, column: Column) -> _Size:
        """How wide a column would like to be, and the longest word it should keep whole."""
        if column.width is not None:
            return _Size(column.width, column.width, column.width, fixed=True)
        texts = [r[index].plain for r in self.rows if isinstance(r[index], Text)]
        longest = max((cell_len(w) for t in [column.heading, *texts] for w in t.split()), default=1)
        cells = max((cell_len(w) for t in [column.footer, *texts] for w in t.split()), default=1)
        # A heading may wrap over its words; it does not set the width.
        natural = max(cell_len(t) for t in [column.footer, *texts, *column.heading.split()])
        return _Size(natural, longest, cells, fixed=column.numeric)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:  # nothing to show is said in words, with no empty grid around it
            yield shown(self.title, "table.title")
            if self.caption is not None:
                yield shown(self.caption, "table.caption")
            return
        sizes = [self._sizes(i, c) for i, c in enumerate(self.columns)]
        room = options.max_width - (3 * len(self.columns) + 1)  # borders and padding
        widths = _fit(sizes, room)
        if sum(widths) > room:  # numbers would be cut in two, names below 3 a line, or
            yield from self._records()  # (rich narrowing the grid further) every cell blank
            return
        grid = Table(
            title=shown(self.title, "table.title"),
            title_justify="left",
            show_footer=any(c.footer for c in self.columns),
            caption=None if self.caption is None else shown(self.caption, "table.caption"),
        )
        for column, width in zip(self.columns, widths, strict=True):
            grid.add_column(
                shown(column.heading),
                footer=shown(column.footer),
                justify="right" if column.numeric else "left",
                overflow="fold",
                width=width,
            )
        for row in self.rows:
            grid.add_row(*row)
        yield grid

    def _records(self) -> Iterator[Text | Columns]:
        """Each row as its headings and values, as many a line as the terminal holds: the
        grid for a terminal too narrow to hold it with its numbers whole. A heading stays
        with its value; the footers (a total) are a row too."""
        yield shown(self.title, "table.title")
        footers = [shown(c.footer) for c in self.columns]
        rows = [*self.rows, footers] if any(c.footer for c in self.columns) else self.rows
        for number, row in enumerate(rows):
            fields = []
            for column, cell in zip(self.columns, row, strict=True):
                if not isinstance(cell, Text) and hasattr(cell, "__rich_console__"):
                    continue  # a drawing (a budget's bar): its figure is in a column of its own
                value = cell if isinstance(cell, Text) else shown(cell)
                if value.plain:
                    field = Text(no_wrap=False, overflow="fold")  # whatever the soft_wrap
                    field.append(shown(" ".join(column.heading.split()) + ":", "bold"))
                    field.append(" ")
                    field.append_text(value)
                    fields.append(field)
            if number:
                yield Text()
            yield Columns(fields, padding=(0, 3))
        if self.caption is not None:
            yield shown(self.caption, "table.caption")


class _Size(NamedTuple):
    """A column's width as laid out: all its text on one line, its longest word, and
    whether it may not wrap at all (numbers)."""

    natural: int
    word: int
    cell: int
    """The longest word of its cells and footer: its heading's words may fold, not these."""
    fixed: bool


# How columns give way on a narrow terminal, in order: (which columns, the floor of each).
_STEPS: list[tuple[bool, Callable[[_Size], int]]] = [
    (False, lambda size: min(size.natural, 10)),  # names wrap, 10 a line
    (False, lambda size: min(size.natural, 6)),  # names, 6 a line
    (True, lambda size: max(size.word, (size.natural + 1) // 2)),  # numbers wrap, whole words
    (False, lambda size: min(size.natural, 3)),  # names, 3 a line
    (True, lambda size: size.cell),  # numbers' headings fold; the numbers stay whole
]
"""Past the last, the grid does not fit: its rows are shown as records (``_records``)."""


def _fit(sizes: Sequence[_Size], room: int) -> list[int]:
    """Column widths within ``room``: each step narrows its widest column first."""
    widths = [size.natural for size in sizes]
    for which, floor in _STEPS:
        floors = [floor(size) for size in sizes]
        movable = [i for i, size in enumerate(sizes) if size.fixed is which]
        while sum(widths) > room:
            candidates = [i for i in movable if widths[i] > floors[i]]
            if not candidates:
                break
            widths[max(candidates, key=lambda i: widths[i])] -= 1
    return widths


def table(
    title: str,
    columns: Sequence[Column],
    rows: Iterable[Sequence[object]],
    *,
    caption: str | Text | None = None,
) -> DataTable:
    """A table of data, safe whatever the data and readable at any width.

    Every string or Text cell is shown as text (:func:`shown`). Nothing is cut
    short with an ellipsis: when the terminal is too narrow, headings wrap, names
    wrap and fold onto more lines first (down to six characters a line), then
    numbers wrap between their words (never inside one: money stays whole), names go
    down to three a line and the headings of numbers fold. Past that, each row is
    shown as a record of its headings and values (``model: llama3.1:8b   calls: 4
    ...``), as many to a line as fit, so no number is cut in two.
    """
    return DataTable(title, columns, rows, caption)
