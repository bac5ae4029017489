"""Pure arithmetic for chargeback: busy time without double counting, and exact splits of money."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length covered by half-open ``(start, end)`` intervals; overlaps count once."""
    total = 0
    current_start = current_end = None
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def allocate(
    total: int, weights: Mapping[K, int], *, order: Iterable[K] | None = None
) -> dict[K, int]:
    """Split ``total`` (integer smallest units: cents, yen) in proportion to ``weights``, summing exactly to ``total``.

    Largest remainder: everyone gets the floor of their exact share, and the
    units left over go to the largest remainders, ties to the earlier key in
    ``order`` (default: sorted keys), so the result never depends on row order.
    Weights must be non-negative and not all zero.
    """
    if total < 0:
        raise ValueError("cannot allocate a negative amount")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must not be negative")
    keys = list(order) if order is not None else sorted(weights, key=repr)
    denominator = sum(weights[k] for k in keys)
    if denominator <= 0:
        raise ValueError("nothing to allocate by: every weight is zero")
    shares = {k: total * weights[k] // denominator for k in keys}
    remainders = {k: total * weights[k] % denominator for k in keys}
    left = total - sum(shares.values())
    rank = {k: i for i, k in enumerate(keys)}
    for k in sorted(keys, key=lambda k: (-remainders[k], rank[k]))[:left]:
        shares[k] += 1
    return shares
