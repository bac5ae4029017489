"""`db import` of a line holding NaN or an infinity (Python's ``json.dumps`` writes them for a float
that is no number; JSON has none): refused for what it holds, never as a lone surrogate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.ledger import span_from_line, span_to_dict
from ollama_meter.ledger._line import CutShort
from tests.ledger.test_transfer import _spans

_MARK = 987_654_321
"""A number no other field of the span holds: the place the constant goes."""

_PLACES = (
    ("input_tokens",), ("output_tokens",), ("http_status",), ("price_rule_id",),
    ("durations_ns", "load"), ("durations_ns", "latency"), ("gpu_watts",),
)  # fmt: skip
"""Where a number may be: the span's counts, a duration, a key a newer export may add."""


def _line_with(place: tuple[str, ...], constant: str, *, tagged: str = "") -> bytes:
    span = span_to_dict(_spans(1)[0])
    inner = span
    for key in place[:-1]:
        inner = inner[key]
    inner[place[-1]] = _MARK
    if tagged:
        span["tags"] = {"note": "TAGGED"}
    line = json.dumps(span, separators=(",", ":")).encode()
    # as written, escapes and all: json.dumps would escape their backslashes
    return line.replace(str(_MARK).encode(), constant.encode()).replace(b"TAGGED", tagged.encode())


@given(
    place=st.sampled_from(_PLACES),
    constant=st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    tagged=st.sampled_from(["", "plain", "\\ud83d\\ude00"]),  # a surrogate pair is no lone one
)
@settings(max_examples=60, deadline=None)
def test_a_number_json_has_not_is_named_and_not_taken_for_a_lone_surrogate(
    place: tuple[str, ...], constant: str, tagged: str
) -> None:
    line = _line_with(place, constant, tagged=tagged)
    with pytest.raises(ValueError) as caught:
        span_from_line(line)
    said = str(caught.value)
    assert "surrogate" not in said, said
    assert f"{constant} at byte {line.index(constant.encode()) + 1}" in said, said
    assert "no number JSON has" in said, said
    assert not isinstance(caught.value, CutShort)


def test_a_lone_surrogate_beside_a_number_json_has_not_is_named_by_the_one_met_first() -> None:
    line = _line_with(("input_tokens",), "NaN", tagged="\\ud800")  # tags come before the counts
    with pytest.raises(ValueError, match="lone surrogate"):
        span_from_line(line)


def test_db_import_says_in_one_line_which_number_json_has_not(
    cli: Any, tmp_path: Path, sqlite_url: str
) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_bytes(_line_with(("durations_ns", "load"), "NaN") + b"\n")
    done = cli("db", "import", str(path), "--db", sqlite_url)
    assert done.code == 2
    said = done.stderr.strip()
    assert len(said.splitlines()) == 1, said
    assert said.startswith("error: line 1: not JSON: NaN at byte ") and "surrogate" not in said
