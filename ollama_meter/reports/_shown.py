"""Money as people read it: rounded to the currency's minor unit, parts that add up to the total.

A page that shows a total and its parts (the spend card and each department, a
legend, a bill's bars) rounds them to cents, whole yen or fils. Each part rounded on
its own did not add up: three departments at 0.004 USD showed 0.00 each beside a
total of 0.01. :func:`rounded_parts` rounds the parts together, largest remainder first,
so they add up to what :func:`money` shows of their sum, and each is still within one
minor unit of its exact amount (kept in the tooltips).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from ollama_meter.records import MICRO_PLACES, minor_places


def money(micros: int, currency: str) -> str:
    """What the UI shows for an amount: rounded half up to ``currency``'s minor unit, with
    thousands separators (exact in tooltips). ``1234567891`` is ``1,234.57`` USD, ``1,235``
    JPY (no cents) and ``1,234.568`` KWD (fils).

    In integers, exact at any size: through Decimal's 28 digits, 10^28 micro-units of gold
    (a budget's projection from its first milliseconds) raised InvalidOperation."""
    places = minor_places(currency)
    return _shown(_rounded(micros, 10 ** (MICRO_PLACES - places)), places)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency`` a page shows (``0.01`` USD, ``1`` JPY, ``0.001`` KWD):
    a money chart's axis ticks in whole ones."""
    return Decimal(1).scaleb(-minor_places(currency))


def rounded_parts(parts: Sequence[int], currency: str, total: int | None = None) -> list[int]:
    """``parts`` rounded together to ``currency``'s minor unit (still in micro-units): they add
    up to their sum as :func:`money` rounds it, and so does any page that shows them. Each
    part is its amount rounded down to the minor unit, and the units the total still needs go
    to the parts with the largest remainders (the earlier on a tie): a part is never a minor
    unit or more from its exact amount, and one that is a whole number of them stays as it is.
    Folded parts ("and 12 more") are the sum of theirs, so they add up too.

    ``total`` is the sum as already shown when it is itself a part rounded with others (a
    department's amount, rounded with the other departments', beside its models): when it is
    their sum rounded down or up to the minor unit the parts add up to it instead (parts that
    do not add up to within a unit of it are rounded to their own sum)."""
    unit = 10 ** (MICRO_PLACES - minor_places(currency))
    floors = [part // unit for part in parts]  # toward -inf: remainders are >= 0
    near = total is not None and total % unit == 0 and abs(total - sum(parts)) < unit
    target = total // unit if near and total is not None else _rounded(sum(parts), unit)
    short = target - sum(floors)  # 0 <= short <= parts with a remainder
    order = sorted(range(len(parts)), key=lambda i: -(parts[i] % unit))
    for index in order[:short]:
        floors[index] += 1
    return [units * unit for units in floors]


def shown_top(
    parts: Sequence[int], currency: str, limit: int, total: int | None = None
) -> tuple[list[int], int]:
    """The first ``limit`` of ``parts`` (a list the page cuts: "and 12 more") as shown, and the
    others as one, rounded together by :func:`rounded_parts` (to ``total`` when given): every
    list of parts beside a total rounds this way, so what it shows adds up to that total."""
    *kept, rest = rounded_parts([*parts[:limit], sum(parts[limit:])], currency, total)
    return kept, rest


def _rounded(micros: int, unit: int) -> int:
    """``micros`` in whole ``unit``s, half up (away from zero), as ROUND_HALF_UP."""
    units, rest = divmod(abs(micros), unit)
    units += 2 * rest >= unit
    return -units if micros < 0 else units


def _shown(units: int, places: int) -> str:
    whole, fraction = divmod(abs(units), 10**places)
    sign = "-" if units < 0 else ""
    return f"{sign}{whole:,}" + (f".{fraction:0{places}d}" if places else "")
