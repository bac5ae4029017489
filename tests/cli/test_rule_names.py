"""A price rule whose pattern matches no model any span has says so, with the names near it.

``ometer pricing set 'lama3.1:*' --input-per-1m 0.15`` saved a rule that prices no call, said
"rule 1: lama3.1:* → input_per_1m 0.15 USD", exit 0; llama3.1's calls stayed unpriced. The
rule is still saved (a model may be priced before its first call), with a note on stderr.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ollama_meter.ledger import Ledger
from tests.factories import make_span

MODELS = ["llama3.1:8b", "qwen2.5:7b"]


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    at = datetime.now(UTC) - timedelta(days=2)
    Ledger(sqlite_url).record([make_span(started_at=at, request_model=m) for m in MODELS])
    return sqlite_url


def test_a_rule_no_model_matches_is_saved_and_said(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("pricing", "set", "lama3.1:*", "--input-per-1m", "0.15")
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("rule 1: lama3.1:* → input_per_1m 0.15 USD")
    assert done.stderr == (
        "note: no span has a model 'lama3.1:*' matches (did you mean 'llama3.1:8b'?): the rule "
        "prices no call until one does\n"
    )


@pytest.mark.parametrize("pattern", ["llama3.1:*", "*", "qwen2.5:7b", "library/qwen2.5:7b", "*:7b"])
def test_a_rule_that_matches_a_model_says_nothing_more(cli, db: str, pattern: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("pricing", "set", pattern, "--input-per-1m", "0.15")
    assert done.code == 0 and done.stderr == "", done.stderr
