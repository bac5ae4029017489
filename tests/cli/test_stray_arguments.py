"""A value given where no argument is taken: every command names it, and says what to do.

``ometer chargeback 2026-12`` (the month without ``--month``) said "Missing option '--month'",
which named neither the stray ``2026-12`` nor that it was read as nothing: click checks the
required options before the arguments left over. Every command is asked here, read from the
app itself, so a command added later is asked too."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.cli import command


def _leaves() -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(path: tuple[str, ...], cmd: Any) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                walk((*path, name), sub)
            return
        found.append((path, cmd))

    walk((), command())
    return found


def _arguments(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "argument"]


TAKING_ANY = {path for path, cmd in _leaves() if any(p.nargs == -1 for p in _arguments(cmd))}
"""Commands whose last argument takes every value after it (``ometer run -- PROGRAM ...``)."""
STRAY = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=60
).filter(lambda s: not s.startswith("-"))


@pytest.mark.parametrize(
    ("path", "cmd"),
    [leaf for leaf in _leaves() if leaf[0] not in TAKING_ANY],
    ids=lambda leaf: " ".join(leaf) if isinstance(leaf, tuple) else "",
)
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stray=STRAY)
def test_a_stray_argument_is_named_with_what_to_do(
    cli: Any, path: tuple[str, ...], cmd: Any, stray: str
) -> None:
    taken = ["x"] * len(_arguments(cmd))  # each argument it takes, then one it does not
    result = cli(*path, *taken, stray)
    assert result.code == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: unexpected argument {stray!r}: "), line
    where = " ".join(("ometer", *path))
    if taken:
        assert f"{where} takes {len(taken)} argument" in line, line
    else:
        assert f"{where} takes no arguments; each value goes after its option" in line, line


def test_a_value_meant_for_the_one_required_option_is_named_with_it(cli: Any) -> None:
    assert cli("chargeback", "2026-12").stderr == (
        "error: unexpected argument '2026-12': ometer chargeback takes no arguments; each value "
        "goes after its option: did you mean --month 2026-12? (see `ometer chargeback --help`)\n"
    )
    assert cli("db", "prune", "30").stderr.startswith(
        "error: unexpected argument '30': ometer db prune takes no arguments; each value goes "
        "after its option: did you mean --keep-days 30?"
    )
    said = cli("chat", "hello", "world").stderr
    assert said.startswith(
        "error: unexpected argument 'world': ometer chat takes 1 argument (PROMPT); put a value "
        "with spaces in quotes, and each other value after its option"
    ), said


def test_every_command_is_asked() -> None:
    assert {("run",)} == TAKING_ANY
    assert len(_leaves()) > 25
