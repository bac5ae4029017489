"""``ometer chat -o key=value``: a value Ollama's option does not take, or would read as another,
is refused up front, naming the option and what it takes; nothing is sent or charged.

``-o seed=<400 digits>`` was sent on, and Ollama refused it in its own words; ``-o seed=1.5``
ran with seed 1, ``-o temperature=1e39`` with an infinite temperature (a 32-bit float)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import OPTION_KINDS, option_problem
from ollama_meter.upstream._options import (
    EXACT_WHOLE,
    FLOAT32_MAX,
    NUMBER,
    STRINGS,
    SWITCH,
    WHOLE,
)


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite ledger: what is asked here is the command line's, not a ledger's."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    return sqlite_url


WRITTEN = {
    WHOLE: st.integers(-EXACT_WHOLE, EXACT_WHOLE),
    NUMBER: st.floats(-FLOAT32_MAX, FLOAT32_MAX, allow_nan=False) | st.integers(-(10**6), 10**6),
    SWITCH: st.booleans(),
    STRINGS: st.lists(st.text(max_size=5), max_size=3),
}
"""Values each kind takes."""
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)  # fmt: skip


def _refused(key: str, value: Any) -> bool:
    """Whether ``value`` is of another kind than ``key`` takes, or past what Ollama reads."""
    kind = OPTION_KINDS[key]
    if value is None:
        return False
    if kind == SWITCH:
        return not isinstance(value, bool)
    if kind == STRINGS:
        return not (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if kind == WHOLE:
        return value != int(value) or abs(value) > EXACT_WHOLE
    return abs(value) > FLOAT32_MAX


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(sorted(OPTION_KINDS)),
    value=ANY_JSON | st.integers().map(lambda n: n * 10**20) | st.floats(1e39, 1e300),
)
def test_an_option_of_the_wrong_kind_or_range_is_refused_before_anything_is_sent(
    cli: Any, db: str, emulator: OllamaEmulator, key: str, value: Any
) -> None:
    emulator.reset()
    result = cli("chat", "-o", f"{key}={json.dumps(value)}", "hi")
    if not _refused(key, value):
        assert result.code == 0, result.stderr
        (sent,) = emulator.requests_to("/api/chat")
        assert sent.body["options"] == {key: value}
        return
    assert result.code == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: --option {key} takes {OPTION_KINDS[key]}"), line
    assert len(line) < 300, line
    assert emulator.requests_to("/api/chat") == []


@given(key=st.sampled_from(sorted(OPTION_KINDS)), data=st.data())
def test_every_value_of_the_kind_an_option_takes_is_sent_as_given(key: str, data: Any) -> None:
    assert option_problem(key, data.draw(WRITTEN[OPTION_KINDS[key]])) is None


def test_the_reported_cases_say_what_to_do(cli: Any, db: str, emulator: OllamaEmulator) -> None:
    said = {
        f"seed={'9' * 400}": "seed takes a whole number from -2^53 to 2^53 (9,007,199,254,740,992)",
        "seed=1.5": "seed takes a whole number: Ollama would cut 1.5 to 1",
        "temperature=hot": "temperature takes a number, e.g. temperature=0.2",
        "use_mmap=1": "use_mmap takes true or false, e.g. use_mmap=true",
        "stop=user:": 'stop takes a list of strings, e.g. stop=["\\n", "user:"]',
    }
    for given_, says in said.items():
        result = cli("chat", "-o", given_, "hi")
        assert (result.code, result.stderr.startswith(f"error: --option {says}")) == (2, True), (
            result.stderr
        )
    assert emulator.requests_to("/api/chat") == []
    # An option Ollama does not know is its to ignore, as before.
    assert cli("chat", "-o", "not_an_option=1", "hi").code == 0
