"""Every way a setting is given (a variable, a flag, a file a setting or an argument names):
a value that cannot work is one error line naming it and saying what to do, at start."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter._environment import GATEWAY_ENV
from ollama_meter.config import known_env_names, load_settings
from ollama_meter.errors import ConfigError
from ollama_meter.testing import unreachable_url
from tests.integrity.test_cli_errors import one_error_line

MAX_PRICING_BYTES = 10 * 2**20
"""The most a pricing file may hold, as the README says."""


def _pipe_of(size: int) -> str:
    """A pipe (as ``<(command)`` gives one) that yields ``size`` bytes of blanks, then ends."""
    read, write = os.pipe()

    def feed() -> None:
        chunk = b" " * 65536
        with os.fdopen(write, "wb") as stream:
            left = size
            try:
                while left > 0:
                    stream.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
            except BrokenPipeError:  # the reader had enough
                pass

    threading.Thread(target=feed, daemon=True).start()
    return f"/dev/fd/{read}"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("/proc/self/mem", "cannot be read: Input/output error"),  # a read the system refuses
        ("pipe", f"more than {MAX_PRICING_BYTES // 2**20} MiB"),
        ("big.toml", f"more than {MAX_PRICING_BYTES // 2**20} MiB"),
    ],
)
def test_a_pricing_file_that_cannot_be_read_whole_is_one_line(
    cli: Any, tmp_path: Path, name: str, says: str
) -> None:
    """``pricing import`` read its argument with no bound and no care: a read error was
    "cannot write the output: Input/output error" (EIO) or "unexpected OSError ... a bug"
    (exit 70), and /dev/zero filled the memory until the kernel killed ometer."""
    path = name
    if name == "pipe":
        path = _pipe_of(MAX_PRICING_BYTES + 1)
    elif name == "big.toml":
        with (tmp_path / name).open("wb") as big:
            big.truncate(MAX_PRICING_BYTES + 1)
    result = cli("pricing", "import", path)
    line = one_error_line(result)
    assert result.code == 1 and says in line and "unexpected" not in line, line
    assert cli("pricing", "list", "--json").stdout.strip() == "[]"


def test_the_pricing_file_setting_has_the_same_bound(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OMETER_PRICING_FILE is read by every command: a file past the bound is one error line
    naming the setting, before its bytes are read (a 100 MB file took 8 s a command)."""
    big = tmp_path / "big.toml"
    with big.open("wb") as file:
        file.write(b'[[rule]]\nmodel = "m"\nper_request = 1\n')
        file.truncate(MAX_PRICING_BYTES + 1)  # the rest is NUL: never parsed
    monkeypatch.setenv("OMETER_PRICING_FILE", str(big))
    result = cli("report")
    line = one_error_line(result)
    assert line.startswith("error: OMETER_PRICING_FILE") and "more than 10 MiB" in line, line


def test_a_pipe_is_read_as_a_pricing_file(cli: Any) -> None:
    """``ometer pricing import <(curl ...)``: a pipe is read to its end, as a file is."""
    read, write = os.pipe()
    os.write(write, b'[[rule]]\nmodel = "m"\nper_request = 1\n')
    os.close(write)
    result = cli("pricing", "import", f"/dev/fd/{read}")
    assert "imported 1 new rule" in result.stdout, result.stderr


def test_dash_reads_the_pricing_file_from_stdin_as_db_import_does(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``curl .../prices.toml | ometer pricing import -`` said "file '-' does not exist", where
    ``db import -`` reads stdin; closed, it is said as db import says it."""
    monkeypatch.chdir(tmp_path)
    rules = '[[rule]]\nmodel = "m"\nper_request = 1\n'
    result = cli("pricing", "import", "-", stdin=rules)
    assert (result.code, result.stdout, result.stderr) == (
        0, "imported 1 new rule(s) from stdin\n", ""
    )  # fmt: skip
    monkeypatch.setattr("sys.stdin", None)
    line = one_error_line(cli("pricing", "import", "-"))
    assert line == (
        "error: stdin is closed: give the pricing file on it (ometer pricing import - < FILE) "
        "or its file name (ometer pricing import FILE)"
    )


@pytest.mark.parametrize("host", ["", " ", "\t", "127.0.0.1\n", "local host"])
def test_an_address_to_listen_on_that_is_blank_or_split_is_refused(
    cli: Any, tmp_path: Path, host: str
) -> None:
    """``--host "$HOST"`` with HOST unset listened on every interface of the machine (the
    socket's empty address is all of them), saying 'listening on  with no key'."""
    # a ledger refused at once: were the address taken, the error would be this one's
    folder = f"sqlite:///{tmp_path}/"
    result = cli("serve", "--host", host, "--port", "0", "--require-key", "--db", folder)
    line = one_error_line(result)
    assert result.code == 2 and "--host" in line and "0.0.0.0" in line, line


PORTED = [
    "OLLAMA_HOST",
    "OMETER_UPSTREAMS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "LANGFUSE_HOST",
    "TRACELOOP_BASE_URL",
    "OMETER_ALERT_WEBHOOK_URL",
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(PORTED), port=st.integers(min_value=0, max_value=70_000))
def test_a_url_setting_names_a_port_a_server_can_listen_on(
    monkeypatch: pytest.MonkeyPatch, name: str, port: int
) -> None:
    """Port 0 is no server's: OLLAMA_HOST=http://gpu1:0 was taken, and every call failed
    with "cannot reach Ollama at http://gpu1:0: is it running?" (an OTLP endpoint's
    every export, unseen)."""
    with monkeypatch.context() as env:
        env.setenv(name, f"http://gpu1:{port}/")
        if 0 < port < 65536:
            load_settings(warn=False)
        else:
            with pytest.raises(ConfigError, match=f"^{name}: .*port"):
                load_settings(warn=False)


def test_a_flag_with_port_0_is_named_as_typed(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:0")
    monkeypatch.setenv("OMETER_RETRIES", "0")
    result = cli("chat", "-m", "m", "hi")
    line = one_error_line(result)
    assert result.code == 2 and line.startswith("error: OLLAMA_HOST: ") and "port" in line, line
    monkeypatch.setenv("OLLAMA_HOST", unreachable_url())
    with pytest.raises(ConfigError, match="^--upstream: .*port"):
        load_settings(flags={"upstreams": "--upstream"}, upstreams="http://a:1,http://b:0")


@pytest.mark.parametrize("amount", ["-1", "0", "-0.5"])
def test_a_budget_limit_that_is_not_above_0_says_so_once(
    cli: Any, monkeypatch: pytest.MonkeyPatch, amount: str
) -> None:
    """-1 was told "must not be negative (a positive amount, or 0)", and 0 then "must be a
    positive amount, not '0'": advice the next error refused."""
    result = cli("budget", "set", "sales", "--daily", amount)
    line = one_error_line(result)
    assert "or 0" not in line and "more than 0" in line, line
    monkeypatch.setenv("DEPARTMENT_BUDGETS", f'{{"sales": {{"daily": {amount}}}}}')
    line = one_error_line(cli("budget", "list"))
    assert line.startswith("error: DEPARTMENT_BUDGETS: ") and "or 0" not in line, line
    assert "more than 0" in line, line


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_pricing_file_setting_is_none_as_other_blank_settings(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    """``OMETER_PRICING_FILE=`` (a template's empty line) was "'.' does not exist or is not a
    file": the empty path is the current folder. Blank is unset, as for OMETER_DB_URL."""
    monkeypatch.setenv("OMETER_PRICING_FILE", blank)
    assert load_settings(warn=False).pricing_file is None


SETTINGS = sorted(known_env_names() - GATEWAY_ENV)
QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
"""A text quoted as ``repr`` writes it: pydantic's words ("Input should be greater than or equal
to 1", "String should match pattern '...'", "unable to parse") are outside any."""


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OMETER_CAPTURE_CONTENT", "maybe", "'maybe' is not true or false (1/0, yes/no and on/off"),
        ("OMETER_JOURNAL", "", "'' is not true or false"),
        ("OMETER_RETRIES", "1.5", "'1.5' is not a whole number from 0 to 10"),
        ("OMETER_KEEP_DAYS", "0", "'0' is not a whole number from 1 up"),
        ("OMETER_SMTP_PORT", "70000", "'70000' is not a whole number from 1 to 65,535"),
        ("OMETER_UPSTREAM_TIMEOUT", "1e400", "'1e400' is not a number from 0.001 to 86,400"),
        ("OMETER_RETRY_BACKOFF", "-1", "'-1' is not a number from 0 to 3,600"),
        ("OMETER_LOG_LEVEL", "verbose", "'verbose' is not one of debug, info, warning, error"),
        ("OMETER_LOG_FORMAT", "JSON", "'JSON' is not one of text, json"),
    ],
)
def test_a_value_of_the_wrong_kind_is_said_with_what_the_setting_takes(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """Pydantic's own words said neither the value nor what to give: "OMETER_KEEP_DAYS: Input
    should be greater than or equal to 1", "OMETER_LOG_LEVEL: String should match pattern
    '(?i)^(debug|info|warning|error|critical)$'"."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(warn=False)
    assert str(caught.value) == f"{name}: {message}" or str(caught.value).startswith(
        f"{name}: {message}"
    )


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(SETTINGS), value=st.text(max_size=12))
@example(name="OMETER_LOG_LEVEL", value="should")  # the user's words, quoted back
@example(name="OMETER_UPSTREAMS", value="1,unable to")  # a piece of them, quoted back
def test_any_text_for_any_setting_is_taken_or_said_in_ometers_words(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with monkeypatch.context() as env:
        if "\x00" in value:  # no environment holds one
            return
        env.setenv(name, value)
        try:
            load_settings(warn=False)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{name}: ") and "\n" not in message, message
            # ometer's words, outside the user's text it quotes back (which may say anything)
            words = QUOTED.sub("''", message)
            assert "should" not in words and "unable to" not in words, message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["OLLAMA_HOST", "OMETER_UPSTREAMS"]),
    form=st.sampled_from(
        [
            "http://u:{}@h:abc",
            "ftp://u:{}@h",
            "http://u:{}@h:0",
            "http://u:{}@ h",
            "u:{}@h:1#x=2",
            "http://u:{}@[::1",
            "http://u:{}@h:1,http://u:{}@h:1",
            "https://u:{}@h:99999",
        ]
    ),
    password=st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=6),
)
@example(name="OLLAMA_HOST", form="http://u:{}@h:1,http://u:{}@h:1", password="000000")
@example(name="OLLAMA_HOST", form="http://u:{}@ h", password="expect")
def test_a_server_url_that_is_refused_never_shows_its_password(
    monkeypatch: pytest.MonkeyPatch, name: str, form: str, password: str
) -> None:
    """OLLAMA_HOST='http://u:s3cret@h:abc' was "'http://u:s3cret@h:abc' has an invalid port",
    password and all, into cron mail and logs (the other URL settings hide it)."""
    if any(c in password for c in "@:/?#[]\\") or (name == "OLLAMA_HOST" and "#" in form):
        return  # (OLLAMA_HOST ignores a fragment, as Ollama does)
    said = [_refusal(monkeypatch, name, form.replace("{}", p)) for p in (password, "hidden")]
    # The same words whatever the password: "expect" is in "expected a URL" (a CI run)
    assert said[0] == said[1] and said[0].startswith(f"{name}: ")
    assert "hidden" not in said[1]


def _refusal(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    with monkeypatch.context() as env:
        env.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings(warn=False)
    return str(caught.value)
