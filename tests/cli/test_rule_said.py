"""``ometer pricing set`` says the rule it saved whole: every price, its currency and each of
its terms given. ``--until 2026-12-01`` and ``--charge-load`` were saved and not said ("rule 1:
llama3.1:* → input_per_1m 1 USD"), so a typo in the end date was seen only by a later
``pricing list``, once the rule had stopped pricing calls."""

from __future__ import annotations

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
