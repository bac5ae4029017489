"""``ometer pricing set`` says the rule it saved whole: every price, its currency and each of
its terms given. ``--until 2026-12-01`` and ``--charge-load`` were saved and not said ("rule 1:
llama3.1:* → input_per_1m 1 USD"), so a typo in the end date was seen only by a later
``pricing list``, once the rule had stopped pricing calls."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ([], "rule 1: llama3.1:* → input_per_1m 1 USD\n"),
        (["--from", "2026-11-01"], "rule 1: llama3.1:* → input_per_1m 1 USD from 2026-11-01\n"),
        (["--until", "2026-12-01"], "rule 1: llama3.1:* → input_per_1m 1 USD until 2026-12-01\n"),
        (
            ["--from", "2026-11-01", "--until", "2026-12-01"],
            "rule 1: llama3.1:* → input_per_1m 1 USD from 2026-11-01 until 2026-12-01\n",
        ),
        (
            ["--gpu-hour", "2", "--charge-load"],
            "rule 1: llama3.1:* → input_per_1m 1, gpu_hour 2 USD, load time charged\n",
        ),
    ],
)
def test_a_rule_set_is_said_with_its_terms(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, options: list[str], said: str
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    done = cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1", *options)
    assert done.code == 0, done.stderr
    assert done.stdout == said


def test_a_rule_that_ends_before_the_first_day_is_refused_as_the_pricing_file_refuses_it(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--until 1970-01-01`` (exclusive) leaves a rule no day to price: the pricing file
    refuses such a rule; the command saved it and said it like any other."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    done = cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1", "--until", "1970-01-01")
    assert done.code == 2 and done.stdout == ""
    assert done.stderr == (
        "error: --until 1970-01-01 ends the rule before the first day ometer works with "
        "(1970-01-01), so it would price no call; give a later date\n"
    )
    kept = cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1", "--until", "1970-01-02")
    assert (
        kept.code == 0
        and kept.stdout == "rule 1: llama3.1:* → input_per_1m 1 USD until 1970-01-02\n"
    )
    listed = cli("pricing", "list", "--json")
    assert listed.code == 0 and [r["effective_until"] for r in json.loads(listed.stdout)] == [
        "1970-01-02"
    ]
