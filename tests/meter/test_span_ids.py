"""A span's row id: a ULID (48 bits of milliseconds, 80 random bits, Crockford base32)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from ollama_meter.records._span import _ulid, new_span_row_id

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
