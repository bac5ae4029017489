"""An integer option or setting is written in digits: ``1_0``, ``10.0`` and other scripts'
digits are refused with one line naming it, not read as 10 (Python's ``int()`` and pydantic
read them, so ``--keep-days 1_00`` pruned on a value nobody wrote)."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter._names import WHOLE_NUMBER
from ollama_meter.config import Settings
from ollama_meter.errors import ConfigError

INT_SETTINGS = {
    "OMETER_RETRIES": "retries",
    "OMETER_BREAKER_FAILURES": "breaker_failures",
    "OMETER_BUDGET_REPLY_CAP": "budget_reply_cap",
    "OMETER_SMTP_PORT": "smtp_port",
    "OMETER_KEEP_DAYS": "keep_days",
    "OMETER_SLOTS": "slots",
    "OMETER_MAX_QUEUE": "max_queue",
}

# What int() reads as a number but nobody writes as one: underscores, a point, other scripts.
lenient = st.one_of(
    st.builds(lambda a, b: f"{a}_{b}", st.integers(1, 9), st.integers(0, 9)),
    st.builds(lambda a: f"{a}.0", st.integers(1, 9)),
    st.sampled_from(["١٠", "１０", "৫", "1e1", "0x10", "10 days", "", " "]),
)
texts = st.text(string.digits + "_.+- \tx١", max_size=6)


def test_every_integer_setting_is_checked() -> None:
    """A new integer setting without the check would read ``1_0`` again."""
    ints = {
        name for name, field in Settings.model_fields.items() if "int" in repr(field.annotation)
    }
    assert ints == set(INT_SETTINGS.values())


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variable=st.sampled_from(sorted(INT_SETTINGS)), value=st.one_of(lenient, texts))
def test_an_integer_setting_is_digits_or_one_line_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_meter.config import load_settings

    with monkeypatch.context() as env:  # one example's variable, not every earlier one's too
        env.setenv(variable, value)
        try:
            read: object = getattr(load_settings(), INT_SETTINGS[variable])
        except ConfigError as exc:
            said: str | None = str(exc)
        else:
            said = None
    if said is not None:
        assert said.startswith(f"{variable}: ") and "\n" not in said
    if not WHOLE_NUMBER.fullmatch(value):
        assert said is not None, f"{variable}={value!r} read as {read!r}"
        if value.strip():  # an empty value is "not set" for some settings
            assert said.startswith(f"{variable}: {value!r} is not a whole number"), said
    elif said is None:  # digits in the setting's range: read as written
        assert read == int(value)
    else:  # digits out of its range: the range is said
        assert " is not a whole number from " in said, said


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=lenient)
def test_an_integer_option_is_digits_or_a_usage_error(
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    value: str,
) -> None:
    """The ledger is never opened: the mistake is the command line's."""
    missing = tmp_path / "never-made.db"
    result = cli("db", "prune", "--keep-days", value, "--db", f"sqlite:///{missing}")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--keep-days" in result.stderr
    assert not missing.exists()
    for args in (("log", "--limit", value), ("demo", "--calls", value)):
        result = cli(*args, "--db", f"sqlite:///{missing}")
        assert result.code == 2 and args[1] in result.stderr, result.stderr
        assert not missing.exists()


@pytest.mark.parametrize("value", ["10", " 10", "+10", "010"])
def test_digits_are_read_as_before(cli, tmp_path: Path, value: str) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert cli("db", "upgrade", "--db", url).code == 0
    days = [(datetime.now(UTC) - timedelta(days=10)).date().isoformat()]
    result = cli("db", "prune", "--keep-days", value, "--db", url)
    days.append((datetime.now(UTC) - timedelta(days=10)).date().isoformat())  # past midnight
    assert result.code == 0, result.stderr
    assert any(f"started before {day} 00:00 UTC" in result.stdout for day in days), result.stdout


def _integer_params(*, envvars: bool = False) -> list[tuple[tuple[str, ...], str, str | None]]:
    """(command path, parameter name, option or None for an argument) of every integer one;
    ``envvars``: of every integer option an environment variable sets, that variable for the
    option."""
    import typer.main

    from ollama_meter.cli import app

    found = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        for param in getattr(command, "params", ()) if path else ():
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is not None and descriptor.annotation in (int, int | None):
                option = param.opts[0] if param.param_type_name == "option" else None
                if envvars and param.envvar:
                    found.append((path, param.name, param.envvar))
                elif not envvars and descriptor.annotation is int:
                    found.append((path, param.name, option))

    walk(typer.main.get_command(app), ())
    return found


INTEGER_PARAMS = _integer_params()


def test_every_integer_option_and_argument_refuses_what_is_not_digits(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Found in the command tree, so a new one is covered without a line here."""
    assert len(INTEGER_PARAMS) >= 15
    for path, name, option in INTEGER_PARAMS:
        given = [option, "1_0"] if option else ["1_0", "1_0", "1_0"][:1]
        result = cli(*path, *given)
        said = result.stderr
        assert result.code == 2, (path, name, said)
        assert "'1_0' is not a whole number" in said and said.count("\n") == 1, (path, name, said)


ENV_PARAMS = _integer_params(envvars=True)


@pytest.mark.parametrize("value", ["2_048", "10.0", "", " "])
def test_every_integer_option_set_from_the_environment_refuses_what_is_not_digits(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    value: str,
) -> None:
    """``OMETER_SLOTS=2_048 ometer serve`` ran a gateway of 2,048 slots, where ``--slots 2_048``
    was refused, and a blank OMETER_MAX_BODY_BYTES was the default where a blank OMETER_SLOTS
    read by the settings is refused. The gateway never starts: the mistake is the setting's."""
    assert {variable for _, _, variable in ENV_PARAMS} >= {
        "OMETER_SLOTS", "OMETER_MAX_QUEUE", "OMETER_MAX_BODY_BYTES", "OMETER_MAX_HEADER_BYTES"
    }  # fmt: skip
    missing = tmp_path / "never-made.db"
    for path, _, variable in ENV_PARAMS:
        assert isinstance(variable, str)
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            # Beyond loopback with no key: refused once read, never a gateway left running.
            result = cli(*path, "--host", "0.0.0.0", "--db", f"sqlite:///{missing}")
        said = result.stderr
        assert result.code == 2, (variable, said)
        assert f"(env var: '{variable}'): {value!r} is not a whole number" in said, said
        assert said.count("\n") == 1 and not missing.exists()
