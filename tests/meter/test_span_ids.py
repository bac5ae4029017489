"""A span's row id: a ULID (48 bits of milliseconds, 80 random bits, Crockford base32)."""

from __future__ import annotations

import time

from hypothesis import given, strategies as st

from ollama_meter.records._span import _ulid, new_span_ids, new_span_row_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def spelled(millis: int, entropy: bytes) -> str:
    """The id as ULID's definition spells it: 26 digits of 5 bits, the most significant first."""
    value = (millis << 80) | int.from_bytes(entropy, "big")
    return "".join(CROCKFORD[(value >> (5 * place)) & 31] for place in reversed(range(26)))


@given(st.integers(-(2**60), 2**60), st.binary(min_size=10, max_size=10))
def test_an_id_is_its_time_and_entropy_in_crockford_base32(millis: int, entropy: bytes) -> None:
    assert _ulid(millis, entropy) == spelled(millis, entropy)


def test_ids_sort_by_their_millisecond() -> None:
    ids = [new_span_row_id(ms * 1_000_000) for ms in (1, 2, 10**12, 1_765_000_000_000)]
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_a_new_spans_three_ids_come_from_one_read_yet_share_no_bits() -> None:
    """Row id, trace id and OTel span id of a new span are read at once from the system's
    randomness: each of its own form, the row id now's millisecond, none repeated."""
    before = time.time_ns() // 1_000_000
    made = [new_span_ids() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    for row_id, trace_id, span_id in made:
        assert len(row_id) == 26 and set(row_id) <= set(CROCKFORD)
        assert before <= _millis(row_id) <= after
        assert len(trace_id) == 32 and int(trace_id, 16) >= 0
        assert len(span_id) == 16 and int(span_id, 16) >= 0
    for ids in zip(*made, strict=True):
        assert len(set(ids)) == len(ids)


def _millis(row_id: str) -> int:
    value = 0
    for digit in row_id:
        value = value * 32 + CROCKFORD.index(digit)
    return value >> 80
