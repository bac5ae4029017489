"""Allocation and busy-time union: exact, never negative, independent of row order."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, strategies as st

from ollama_meter.reports import allocate, union_length
from ollama_meter.reports._chargeback import _fixed_shares
from ollama_meter.reports._choices import IDLE

weights = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.integers(min_value=0, max_value=10**12),
    min_size=1,
    max_size=25,
).filter(lambda w: sum(w.values()) > 0)


@given(st.integers(min_value=0, max_value=10**10), weights, st.randoms())
def test_shares_sum_exactly_are_never_negative_and_stable_under_row_order(
    total: int, w: dict[str, int], rnd: random.Random
) -> None:
    shares = allocate(total, w)
    assert sum(shares.values()) == total
    assert all(share >= 0 for share in shares.values())
    denominator = sum(w.values())
    for key, share in shares.items():
        exact = total * w[key] / denominator
        assert abs(share - exact) < 1 + 1e-6  # within a cent of the exact share
    items = list(w.items())
    rnd.shuffle(items)
    assert allocate(total, dict(items)) == shares


def test_leftover_cents_go_to_the_largest_remainders_then_the_first_key() -> None:
    assert allocate(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert allocate(10, {"a": 1, "b": 2}) == {"a": 3, "b": 7}
    assert allocate(5, {"x": 0, "y": 3}) == {"x": 0, "y": 5}
    with pytest.raises(ValueError, match="every weight is zero"):
        allocate(5, {"x": 0})
    with pytest.raises(ValueError, match="negative"):
        allocate(-1, {"x": 1})
    with pytest.raises(ValueError, match="negative"):
        allocate(1, {"x": -1, "y": 2})


intervals = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=30,
)


@given(intervals)
def test_union_counts_overlaps_once(spans: list[tuple[int, int]]) -> None:
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
    assert union_length(spans) == len(covered)
    assert union_length(spans) <= sum(end - start for start, end in spans)


departments = st.dictionaries(
    st.tuples(st.sampled_from(["acme", "globex"]), st.text("abcz.-_", min_size=1, max_size=3)),
    st.integers(0, 10**18) | st.integers(0, 3),
    max_size=12,
)


@given(
    cents=st.integers(0, 10**14),  # up to the largest fixed cost, a trillion
    weights=departments,
    idle=st.sampled_from(["share", "separate"]),
    busy=st.integers(0, 10**16),
    spare=st.integers(0, 10**16),
    rnd=st.randoms(),
)
def test_a_fixed_cost_is_split_to_the_cent_whatever_the_usage(
    cents: int, weights: dict[tuple[str, str], int], idle: str, busy: int, spare: int, rnd: Any
) -> None:
    """No usage at all, one department, weights of 0 to 10^18 ns, all capacity busy or none:
    the shares are whole cents that sum to the fixed cost, none negative, only to departments
    that used the GPUs (and __idle__), the same whatever order the rows come in."""
    capacity = max(busy + spare, 1)
    shares = _fixed_shares(cents, weights, idle=idle, busy=min(busy, capacity), capacity=capacity)
    assert sum(shares.values()) == cents and min(shares.values(), default=0) >= 0
    used = {key for key, weight in weights.items() if weight > 0}
    assert set(shares) - used <= {(IDLE, IDLE)}
    if cents == 0:
        assert shares == {}  # nothing to share is no row of zeros
    elif not used:
        assert shares == {(IDLE, IDLE): cents}
    items = list(weights.items())
    rnd.shuffle(items)
    again = _fixed_shares(
        cents, dict(items), idle=idle, busy=min(busy, capacity), capacity=capacity
    )
    assert again == shares


def test_a_hundred_thousand_departments_of_one_nanosecond_share_one_cent() -> None:
    weights = {("acme", f"d{i:06d}"): 1 for i in range(100_000)}
    shares = _fixed_shares(1, weights, idle="share", busy=10, capacity=10)
    assert shares[("acme", "d000000")] == 1 and sum(shares.values()) == 1  # ties: the first key
