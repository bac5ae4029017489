"""A batch's histogram bins, counted a cell at a time: what ``_rollup`` adds to ``rollup_histograms``.

A delta keeps, per quarter hour, a number for each bin a call counts in and each row it
counts there (its department's, its model's, everyone's: :class:`BinEntries`). The rows of
a cell are those numbers counted together, the quarters of a day or month chained: counted
in C (``Counter``), once per kind of row, rather than added call by call to every row of
every grain (most of an import's rollup time went there). Nothing here knows SQL but the
write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import tzinfo
from itertools import chain
from typing import Any

from sqlalchemy import Connection

from ollama_meter.ledger._cells import ANYONE, SLOTS, Grain, floor_cell
from ollama_meter.ledger._upserts import Statements, array, run, run_arrays

EVERYONE = (ANYONE, ANYONE, ANYONE)
"""The (tenant, department, model) of histogram rows for all calls together."""
EACH_MODEL = (ANYONE, "+")
"""The (tenant, department) of histogram rows per model over all tenants and departments.

``+`` is no department's name (names begin with a letter or digit), so these rows never
meet a department's, nor :data:`EVERYONE`'s (a model may be called ``*``)."""

Bins = tuple[int, int] | list[int]
"""A row's bins: (bin, calls) when one bin is counted (most rows), else all of them."""
Counted = tuple[int, int, tuple[str, ...], dict[tuple[Any, ...], Bins]]
"""(grain, start s, the row key's first names, the rest of the key → its bins): a cell's rows
of one kind. The rest is (tenant, department, model, metric, decade) for a department's rows
(no first names), (model, metric, decade) for a model's (:data:`EACH_MODEL`), (metric,
decade) for everyone's (:data:`EVERYONE`)."""
_FIRST = ((), EACH_MODEL, EVERYONE)
"""The first names of each kind of row, in the order :class:`BinEntries` keeps them."""


class BinEntries:
    """The bins a batch's calls count in, per quarter hour: for each call and bin, a number
    for each of its rows (a department's, its model's, everyone's), the row's own number
    times :data:`SLOTS` plus the bin. Numbers are counted in C, and a row key is built once
    per row, not once per call and grain."""

    __slots__ = ("added", "keys", "known", "numbers", "taken")

    def __init__(self) -> None:
        self.added: dict[int, tuple[list[int], list[int], list[int]]] = {}
        """Quarter start µs → each kind's entries of the calls counted."""
        self.taken: dict[int, tuple[list[int], list[int], list[int]]] = {}
        """The same of the calls taken out (sign -1)."""
        self.keys: tuple[list[tuple[Any, ...]], ...] = ([], [], [])
        """Each kind's row keys, by number."""
        self.known: tuple[dict[tuple[Any, ...], int], ...] = ({}, {}, {})
        """Each kind's row key → its number times :data:`SLOTS`."""
        self.numbers: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        """(tenant, department, model, metric, decade) → its rows' numbers, one per kind."""

    def __bool__(self) -> bool:
        return bool(self.added or self.taken)

    def add(
        self,
        quarter: int,
        named: tuple[str, str, str],
        slots: Iterable[tuple[int, int, int]],
        sign: int = 1,
    ) -> None:
        """Count one call of ``named`` (tenant, department, model) in ``slots`` (metric,
        decade, bin), ``sign`` times (negative: taken out)."""
        if sign not in (1, -1):
            for _ in range(abs(sign)):
                self.add(quarter, named, slots, 1 if sign > 0 else -1)
            return
        into = self.added if sign > 0 else self.taken
        lists = into.get(quarter)
        if lists is None:
            lists = into[quarter] = ([], [], [])
        mine, models, everyone = lists
        numbers = self.numbers
        tenant, department, model = named
        for metric, decade, index in slots:
            key = (tenant, department, model, metric, decade)
            number = numbers.get(key)
            if number is None:
                number = numbers[key] = self._numbered(key)
            mine.append(number[0] + index)
            models.append(number[1] + index)
            everyone.append(number[2] + index)

    def _numbered(self, key: tuple[Any, ...]) -> tuple[int, int, int]:
        """The numbers (times :data:`SLOTS`) of ``key``'s rows, given when first seen."""
        found = []
        for kind, row in enumerate((key, key[2:], key[3:])):
            known = self.known[kind]
            number = known.get(row)
            if number is None:
                number = known[row] = len(known) * SLOTS
                self.keys[kind].append(row)
            found.append(number)
        return found[0], found[1], found[2]

    def count(self, grains: Sequence[Grain], zone: tzinfo | None) -> list[Counted]:
        """The calls added less those taken, in the rows of each of ``grains``' cells, cells
        in order. A department's rows are kept per day and month only; each model's and
        everyone's per quarter hour too. A row whose calls come to 0 in every bin is left out."""
        added, taken = self.added, self.taken
        cells: dict[tuple[int, int], list[int]] = {}
        for quarter in {*added, *taken}:
            for grain in grains:
                start = floor_cell(grain, quarter, zone) // 10**6
                cells.setdefault((int(grain), start), []).append(quarter)
        out: list[Counted] = []
        for (level, start), quarters in sorted(cells.items()):
            for kind in range(level == Grain.QUARTER, 3):
                counts = Counter(
                    chain.from_iterable(added[q][kind] for q in quarters if q in added)
                )
                minus = [taken[q][kind] for q in quarters if q in taken]
                if minus:
                    counts.subtract(chain.from_iterable(minus))
                if rows := _rows(counts, self.keys[kind]):
                    out.append((level, start, _FIRST[kind], rows))
        return out


def _rows(counts: dict[int, int], keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Bins]:
    """Counted entries as rows: (key → bins)."""
    rows: dict[int, Bins] = {}
    for number, calls in counts.items():
        if calls:
            row, index = divmod(number, SLOTS)
            bins = rows.get(row)
            if bins is None:
                rows[row] = (index, calls)
            elif isinstance(bins, tuple):
                several = rows[row] = [0] * SLOTS
                several[bins[0]] = bins[1]
                several[index] = calls
            else:
                bins[index] += calls
    return {keys[row]: bins for row, bins in rows.items()}


def histogram_rows(counted: Iterable[Counted]) -> dict[tuple[Any, ...], list[int]]:
    """Every (grain, start s, tenant, department, model, metric, decade) with a bin that
    changes, with its bins."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for level, start, first, rows in counted:
        lead = (level, start, *first)
        for row, bins in rows.items():
            if isinstance(bins, tuple):
                index, calls = bins
                out[lead + row] = every = [0] * SLOTS
                every[index] = calls
            else:
                out[lead + row] = bins
    return out


def write_bins(conn: Connection, statements: Statements, counted: Sequence[Counted]) -> None:
    """Add the bins to the stored rows. On SQLite (writers take turns) a row with one bin
    counted (most rows: a quarter hour holds a few calls) adds to that bin alone, not 74
    zeros too; on PostgreSQL, where concurrent writers lock rows in key order, all go in one
    statement, in key order, as arrays (:func:`run_arrays`)."""
    # A delta's bin counts one call each of its spans at most: no 64-bit bound to keep here.
    if statements.histogram_bin is None:
        if statements.histogram.rows is not None:
            if arrays := _arrays(counted, statements.histogram.text):
                run_arrays(conn, statements.histogram, arrays)
            return
        every = histogram_rows(counted)
        whole = [key + tuple(every[key]) for key in sorted(every)]
        if whole:
            run(conn, statements.histogram.sql, whole)
        return
    single: dict[int, list[tuple[Any, ...]]] = {}
    several: list[tuple[Any, ...]] = []
    for level, start, first, rows in counted:
        lead = (level, start, *first)
        for row, bins in rows.items():
            if isinstance(bins, tuple):
                index, calls = bins
                values = single.get(index)
                if values is None:
                    values = single[index] = []
                values.append(lead + row + (calls,))
            else:
                several.append(lead + row + tuple(bins))
    if several:
        several.sort()
        run(conn, statements.histogram.sql, several)
    for index, values in sorted(single.items()):
        values.sort()
        run(conn, statements.one_bin(conn.dialect, index).sql, values)


def _arrays(counted: Iterable[Counted], text: Sequence[bool]) -> list[str]:
    """The rows' arrays for :func:`run_arrays`, rows in key order: a column each of the key,
    then of the bins (``text``: which columns are text). A bin column is mostly zeros (a
    row has a call or two in one bin): made from its few counts, not from every row's 75
    numbers, which took a third of the import's time in the client."""
    rows: dict[tuple[Any, ...], Bins] = {}
    for level, start, first, counts in counted:
        lead = (level, start, *first)
        for row, bins in counts.items():
            rows[lead + row] = bins
    if not rows:
        return []
    keys = sorted(rows)
    columns = [["0"] * len(keys) for _ in range(SLOTS)]
    for at, key in enumerate(keys):
        bins = rows[key]
        if isinstance(bins, tuple):
            columns[bins[0]][at] = str(bins[1])
        else:
            for index, calls in enumerate(bins):
                if calls:
                    columns[index][at] = str(calls)
    return [
        *map(array, zip(*keys, strict=True), text),
        *("{" + ",".join(values) + "}" for values in columns),
    ]
