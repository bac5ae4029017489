"""A value too long to be what it should (a variable holding a file's content, a paste gone
wrong) is quoted by its start and its length in the one line that refuses it, as the name
filters' notes quote it: the line held all 120,000 characters of it."""

from __future__ import annotations

from typing import Any

import pytest

LONG = "a" * 120_000

COMMANDS = [
    ("report", "--period", LONG),
    ("report", "--since", LONG),
    ("report", "--since", "2026-11-01", "--until", LONG),
    ("perf", "--period", LONG),
    ("chargeback", "--month", LONG),
    ("db", "export", "--since", LONG),
    ("db", "rollup", "--zone", LONG),
    ("db", "prune", "--keep-days", LONG),
    ("budget", "set", "--tenant", LONG, "--daily", "5"),
    ("keys", "create", "--tenant", "acme", "--dept", "sales", "--name", LONG),
    ("limit", "set", "sales", "--tenant", LONG, "--rpm", "5"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(x[:12] for x in a))
def test_a_long_value_is_quoted_by_its_start_and_length(
    cli: Any, sqlite_url: str, args: tuple[str, ...]
) -> None:
    cli("db", "upgrade", "--db", sqlite_url)  # a ledger there, for the commands that need one
    done = cli(*args, "--db", sqlite_url)
    assert done.code == 2, done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and len(line) < 600, line[:300]
    # quoted by its start and length, or said without it ("is longer than 64 characters")
    assert "... (120,000 characters)" in line or "a" * 61 not in line, line[:300]


DEEP = "/tmp/" + "/".join(["y" * 200] * 600)  # 120,605 characters: no folder of it is there


@pytest.mark.parametrize(
    "args",
    [
        ("report", "--db", f"sqlite:///{DEEP}"),
        ("db", "import", DEEP),
        ("report", "--db", f"sqlite:////tmp/{'y' * 100_000}"),
    ],
    ids=["no-ledger", "no-file", "name-too-long"],
)
def test_a_long_path_from_a_value_is_quoted_by_its_start_and_length(
    cli: Any, args: tuple[str, ...]
) -> None:
    """A refusal that names the file a long value names (the path of a `--db` URL, a file
    name the system cut) held all of it: only the value as typed was cut."""
    done = cli(*args)
    assert done.code in (1, 2), done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and len(line) < 600, line[:300]
    assert " characters)" in line, line[:300]
