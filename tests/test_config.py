"""Settings: defaults, normalisation, .env, and one clear line per bad value."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from ollama_meter import _environment
from ollama_meter._names import system_timezone
from ollama_meter._urls import http_url, normalize_host, parse_upstreams
from ollama_meter.config import Settings, known_env_names, load_settings
from ollama_meter.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("gpu1:8080", "http://gpu1:8080"),
        ("https://ollama.example", "https://ollama.example:443"),
        ("http://[::1]:11434/", "http://[::1]:11434"),
        ("http://host:11434/proxy", "http://host:11434/proxy"),
    ],
)
def test_ollama_host_forms(raw: str, url: str) -> None:
    assert normalize_host(raw) == url


@pytest.mark.parametrize(
    "raw",
    [
        "gpu1",
        "gpu1:8080",
        "0.0.0.0",
        "[::1]",
        ":11435",
        "http://gpu1",
        "http://gpu1/",
        "http://[::1]",
        "http://10.0.0.7/ollama/",
        "http://gpu1:8080",
        "https://gpu1",
        "https://gpu1/ollama",
    ],
)
def test_an_ollama_address_is_the_server_the_ollama_client_calls(raw: str) -> None:
    """``http://gpu1`` with no port is port 80 to the ``ollama`` client, as to Ollama's own CLI
    (its Go ``envconfig.Host``: an Ollama behind a proxy on the web's port); ometer called
    11434 there, another server or none. ``:11435`` is a port on this machine to both; ometer
    refused it. ``MeteredClient(host)`` calls where ``ollama.Client(host)`` calls."""
    from ollama._client import _parse_host

    assert normalize_host(raw) == _parse_host(raw).rstrip("/")


@pytest.mark.parametrize(
    "raw",
    ["", "ftp://x", "http://host:notaport", "http://", "http://gpu 1:11434", "http://a\x00b:1"],
)
def test_bad_hosts(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_host(raw)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMETER_TIMEZONE")
    cfg = load_settings()
    assert (cfg.ollama_host, cfg.tenant, cfg.department, cfg.currency) == (
        "http://127.0.0.1:11434",
        "default",
        "unassigned",
        "USD",
    )
    assert cfg.timezone == system_timezone()
    assert cfg.ledger_url.endswith("ollama-meter/ledger.db") and cfg.ledger_url.startswith(
        "sqlite:///"
    )


def test_dotenv_is_read_and_environment_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "OMETER_TENANT=from-dotenv\nOMETER_DEPARTMENT=ops\nOMETER_CURRENCY=eur\nUNRELATED=1\n"
    )
    monkeypatch.setenv("OMETER_DEPARTMENT", "from-env")
    cfg = load_settings()
    assert (cfg.tenant, cfg.department, cfg.currency) == ("from-dotenv", "from-env", "EUR")
    assert load_settings(tenant="flag", db_url=None).tenant == "flag"


def test_a_dotenv_that_is_not_utf8_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_bytes(b"OMETER_TENANT=caf\xe9\n")  # Latin-1, as an old editor saves
    with pytest.raises(ConfigError, match=r"^\.env: not UTF-8 text \(.* at byte 17\); save it"):
        load_settings()
    result = cli("report")
    assert result.code == 2
    assert (
        result.stderr
        == "error: .env: not UTF-8 text (invalid continuation byte at byte 17); save it as UTF-8\n"
    )


@given(
    before=st.lists(st.from_regex(r"[A-Z][A-Z_]{0,8}=[a-z0-9]{0,6}", fullmatch=True), max_size=3),
    value=st.from_regex(r"[A-Za-z/_ ]{0,12}", fullmatch=True),
    quote=st.sampled_from(['"', "'"]),
)
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_dotenv_line_that_cannot_be_read_is_an_error_not_a_default(
    tmp_path: Path, before: list[str], value: str, quote: str
) -> None:
    """python-dotenv skips such a line with a warning: its setting would silently be the default.
    The message names the line and its setting, never its value (which may be a secret)."""
    lines = [*before, f"OMETER_TIMEZONE={quote}{value}", "OMETER_TENANT=acme"]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f".env line {len(before) + 1} (setting OMETER_TIMEZONE) cannot be read: "
        "is a quote left open? Fix or remove the line"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "OMETER_CURRENCY",
            "dollars",
            "OMETER_CURRENCY: 'dollars' is not a 3-letter ISO 4217 code",
        ),
        ("OMETER_TENANT", "a b", "OMETER_TENANT: 'a b' has characters"),
        ("OMETER_DEPARTMENT", "x" * 65, "OMETER_DEPARTMENT: is longer than 64"),
        ("OLLAMA_HOST", "ftp://x", "OLLAMA_HOST: 'ftp://x' is not an http(s) URL"),
        ("OMETER_DB_URL", "not a url", "OMETER_DB_URL: 'not a url' is not a database URL"),
        (
            "OMETER_PRICING_FILE",
            "/no/such/file.toml",
            "OMETER_PRICING_FILE: '/no/such/file.toml' does not exist",
        ),
        (
            "OMETER_UPSTREAM_TIMEOUT",
            "0",
            "OMETER_UPSTREAM_TIMEOUT: '0' is not a number from 0.001 to 86,400",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector",
            "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector' is not an http(s) URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://[::1",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://[::1' is not a URL with a valid host",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://c:99999",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://c:99999' is not a URL with a valid",
        ),
        ("LANGFUSE_HOST", "ftp://lf", "LANGFUSE_HOST: 'ftp://lf' is not an http(s) URL"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-team=ops,Authorization: Bearer t",
            "OTEL_EXPORTER_OTLP_HEADERS: 'Authorization' is written name: value, not name=value",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-team=a%0D%0AHost: evil",
            "OTEL_EXPORTER_OTLP_HEADERS: the value of 'x-team' has a line break",
        ),
        ("TRACELOOP_BASE_URL", "https://", "TRACELOOP_BASE_URL: 'https://' is not an http(s) URL"),
        # files of the zone database that are no zone: days would be cut per host
        ("OMETER_TIMEZONE", "localtime", "OMETER_TIMEZONE: 'localtime' is not a zone of its own"),
        ("OMETER_TIMEZONE", "Factory", "OMETER_TIMEZONE: 'Factory' is not a zone of its own"),
        ("OMETER_TIMEZONE", "posixrules", "OMETER_TIMEZONE: 'posixrules' is not a zone of its"),
        ("OMETER_TIMEZONE", "Mars/Olympus", "OMETER_TIMEZONE: 'Mars/Olympus' is not a known"),
        # the zone database's leap-second copies: Python reads them an hour off for months
        # (right/Europe/Berlin says +02:00 all winter since 2020), so days were cut wrong
        (
            "OMETER_TIMEZONE",
            "right/Europe/Berlin",
            "OMETER_TIMEZONE: 'right/Europe/Berlin' counts leap seconds; use Europe/Berlin",
        ),
        (
            "OMETER_TIMEZONE",
            "Right/UTC",
            "OMETER_TIMEZONE: 'Right/UTC' counts leap seconds; use UTC",
        ),
        # the zone database's posix/ copies: a ledger whose days began at one could not be
        # read where they are missing (Python's tzdata package has none)
        (
            "OMETER_TIMEZONE",
            "posix/Europe/Berlin",
            "OMETER_TIMEZONE: 'posix/Europe/Berlin' is Europe/Berlin under a name not every "
            "machine knows; use Europe/Berlin",
        ),
        # a name longer than a file name may be: the zone lookup's OSError was exit 70
        ("OMETER_TIMEZONE", "Europe/" + "y" * 256, "OMETER_TIMEZONE: 'Europe/yyyyyy"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--upstream", "ftp://x", "--port", "9"], "--upstream: 'ftp://x' is not an http"),
        (
            ["serve", "--upstream", "http://a:1", "--upstream", "gpu:x#slots=2", "--port", "9"],
            "--upstream: ",
        ),
        (
            ["pricing", "set", "llama3.1:8b", "--input-per-1m", "1", "--currency", "dollars"],
            "--currency: ",
        ),
        (["budget", "list", "--db", "not a url"], "--db: 'not a url' is not a database URL"),
    ],
)
def test_a_bad_flag_is_named_as_typed_not_as_its_variable(
    cli, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:11434")  # a good variable: the flag is bad
    done = cli(*args)
    assert done.code != 0
    assert f"error: {message}" in done.stderr
    assert "Traceback" not in done.stderr and "OLLAMA_HOST" not in done.stderr


@pytest.mark.parametrize(
    ("name", "value", "flag", "bound"),
    [
        ("OMETER_SLOTS", "999999999999", "--slots", "less than or equal to 100000"),
        ("OMETER_MAX_QUEUE", "1000001", "--max-queue", "less than or equal to 1000000"),
    ],
)
def test_a_bad_value_of_a_serve_variable_names_the_variable(
    cli, monkeypatch: pytest.MonkeyPatch, name: str, value: str, flag: str, bound: str
) -> None:  # type: ignore[no-untyped-def]
    """Read by the flag from the environment, then checked by the settings: the error named
    only the flag, which the user never typed."""
    monkeypatch.setenv(name, value)
    done = cli("serve", "--port", "9")
    assert done.code == 2
    assert done.stderr.strip() == (
        f"error: Invalid value for '{flag}' (env var: '{name}'): Input should be {bound} "
        "(see `ometer serve --help`)"
    )


def test_blank_db_url_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMETER_DB_URL", "  ")
    assert load_settings().db_url is None


def test_several_upstreams_with_their_own_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMETER_UPSTREAMS", " gpu1:11434#slots=4 , http://gpu2:11434/ ,,")
    monkeypatch.setenv("OMETER_SLOTS", "2")
    specs = load_settings().upstream_specs
    assert [(s.url, s.slots) for s in specs] == [
        ("http://gpu1:11434", 4),
        ("http://gpu2:11434", 2),  # the default for a server that names none
    ]
    monkeypatch.delenv("OMETER_UPSTREAMS")
    monkeypatch.setenv("OLLAMA_HOST", "gpu3")
    assert [(s.url, s.slots) for s in load_settings().upstream_specs] == [("http://gpu3:11434", 2)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://gpu1:11434#workers=2", "after # only slots=N is understood"),
        ("http://gpu1:11434#slots=0", "slots must be between 1 and 100,000"),
        ("http://gpu1:11434#slots=x", "after # only slots=N is understood"),
        ("gpu1,http://gpu1:11434", "http://gpu1:11434 is given twice"),
        ("ftp://gpu1", "OMETER_UPSTREAMS"),
    ],
)
def test_a_bad_upstream_list_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("OMETER_UPSTREAMS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("OMETER_UPSTREAMS: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@example(number="²")
@example(number="٣")
@example(number="5\x1f")  # str.strip() takes U+001F off, int() does not: 5 slots
@example(number="0\x1f")
@given(number=st.text(st.characters(exclude_characters=","), max_size=8))
def test_a_servers_slots_are_ascii_digits_or_a_one_line_error_saying_so(number: str) -> None:
    """``#slots=²`` passed str.isdigit() and died in int() with Python's own words; ``٣``
    (an Arabic-Indic three) was taken as 3 slots."""
    given = f"http://gpu1:11434#slots={number}"
    part = given.strip()  # as the list is read: each server stripped
    digits = number.strip()
    if digits.isascii() and digits.isdigit() and 1 <= int(digits) <= 100_000:
        assert parse_upstreams(given)[0].slots == int(digits)
        return
    with pytest.raises(ValueError) as caught:
        parse_upstreams(given)
    assert str(caught.value) in (
        f"{part!r}: after # only slots=N is understood, e.g. http://gpu1:11434#slots=4",
        f"{part!r}: slots must be between 1 and 100,000",
    )


DURATIONS = {
    "OMETER_UPSTREAM_TIMEOUT": "upstream_timeout",
    "OMETER_RETRY_BACKOFF": "retry_backoff",
    "OMETER_BREAKER_RESET": "breaker_reset",
    "OMETER_EXPORT_TIMEOUT": "export_timeout",
    "OMETER_LEDGER_WAIT": "ledger_wait",
    "OMETER_DISCOVERY_INTERVAL": "discovery_interval",
}


@given(
    name=st.sampled_from(sorted(DURATIONS)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["inf", "-inf", "nan", "Infinity", "1e300", "1e-320", "86401"]),
    ),
)
def test_every_duration_setting_is_a_finite_timer_or_a_clear_error(name: str, value: str) -> None:
    """What a setting accepts can be slept, joined and added to a clock: none overflows later."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(name, value)
        try:
            seconds = getattr(load_settings(), DURATIONS[name])
        except ConfigError as exc:
            refused = str(exc)
        else:
            refused = ""
    if refused:
        # A blank list of recipients beside the SMTP server set for it: the pair is named.
        named = {name, *_EMAIL_PAIR} if name in _EMAIL_PAIR else {name}
        assert refused.split(": ")[0] in named and "\n" not in refused
        return
    assert 0 <= seconds <= 86_400 <= threading.TIMEOUT_MAX
    assert datetime.now(UTC) + timedelta(seconds=seconds) > datetime(2000, 1, 1, tzinfo=UTC)
    assert int(seconds * 1000) >= 0


KNOWN = sorted(known_env_names())


@given(name=st.sampled_from(KNOWN), at=st.integers(min_value=7), edit=st.sampled_from("dsx"))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_misspelt_setting_is_named_not_silently_ignored(
    name: str, at: int, edit: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OMETER_ name that is no setting (a letter dropped, doubled or swapped) would leave
    its setting at the default: a key not required, spans never pruned. It is said, once,
    with the setting meant; a setting spelt right is never warned about."""
    if not name.startswith("OMETER_"):
        return
    at = 7 + at % (len(name) - 7)
    typo = {
        "d": name[:at] + name[at + 1 :],
        "s": name[:at] + name[at] + name[at:],
        "x": name[:at] + name[at + 1 : at + 2] + name[at] + name[at + 2 :],
    }[edit]
    if typo in KNOWN or not typo.removeprefix("OMETER_"):
        return
    caplog.clear()
    # A context of its own: an example that fails must not leave its typo for the next.
    with monkeypatch.context() as patched, caplog.at_level("WARNING", logger="ollama_meter"):
        patched.setattr(_environment, "_warned", set())  # as in a process of its own
        patched.setenv(typo, "on")
        load_settings()
        load_settings()
    (said,) = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.config"]
    assert said.startswith(f"{typo} is not an ometer setting and is ignored"), said
    assert "did you mean OMETER_" in said


def test_settings_read_outside_the_settings_model_are_known() -> None:
    """Every environment variable an `ometer` option reads is a known name."""
    import typer.main

    from ollama_meter.cli import app

    def envvars(command: Any) -> set[str]:
        names = {p.envvar for p in command.params if isinstance(p.envvar, str)}
        for sub in getattr(command, "commands", {}).values():
            names |= envvars(sub)
        return names

    assert envvars(typer.main.get_command(app)) <= known_env_names()
    assert {"OMETER_ADMIN_TOKEN", "OMETER_DB_URL", "OLLAMA_HOST"} <= known_env_names()


def test_what_ometer_serve_reads_from_the_environment_only_is_not_trusted_to_a_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_environment, "_warned", set())
    (tmp_path / ".env").write_text("OMETER_ADMIN_TOKEN=s3cret\nOMETER_TEST_PG_URL=x\n")
    with caplog.at_level("WARNING", logger="ollama_meter"):
        load_settings()
    assert caplog.messages == [
        "OMETER_ADMIN_TOKEN in .env is ignored: ometer serve reads it from the environment "
        "only; export it or give its flag"
    ]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_zones_known_on_a_host_without_zone_data(cli, monkeypatch, zone: str) -> None:  # type: ignore[no-untyped-def]
    """A slim container has no /usr/share/zoneinfo: the tzdata package stands in (even UTC
    was refused without it)."""
    import zoneinfo

    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        monkeypatch.setenv("OMETER_TIMEZONE", zone)
        assert load_settings().tz.key == zone
        done = cli("report", "--period", "month")
        assert done.code == 0, done.stderr
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()


CHANNEL_VALUES = {
    "OMETER_ALERT_WEBHOOK_URL": [
        "https://hooks.example.com/services/T0/B0/x",
        "http://[::1]:8080/hook",
        "http://[bad/SECRET",
        "http://hook:99999/SECRET",
        "http://",
        "https://a b/SECRET",
        "https://user:SECRET@hook example/SECRET?token=SECRET",
        "ftp://user:SECRET@hook/SECRET",
        "http://h/x\r\nX-Injected: 1",
        "http://h/\x7f",
        "https://user:pass@hook.example/x?token=t",
        "hook.example/x",
    ],
    "OMETER_SMTP_HOST": ["mail.example.org", "::1", "10.0.0.5", "mail:587", "a b", "m\r\nx", "/x"],
    "OMETER_SMTP_FROM": [
        "ometer@example.org",
        "Ometer <ometer@example.org>",
        "not an address",
        "o@x\r\nBcc: evil@example.org",
        "a@b, c@d",
    ],
    "OMETER_ALERT_EMAIL_TO": [
        "it@example.org",
        "it@example.org, cfo@example.org",
        "Jane Doe <jane@example.org>",
        "x",
        "it@example.org;cfo@example.org",
        "it@example.org\r\nBcc: evil@example.org",
        "<>",
        "a@b@c",
        "it@example.org,",
    ],
}


_EMAIL_PAIR = {"OMETER_SMTP_HOST": "mail.example.org", "OMETER_ALERT_EMAIL_TO": "it@example.org"}


def _usable(name: str, settings: Any) -> None:
    """What a channel does with the accepted value, done here: it must not fail for the value."""
    from email.message import EmailMessage
    from email.utils import getaddresses

    import httpx

    from ollama_meter.budgets import WebhookChannel

    if name == "OMETER_ALERT_WEBHOOK_URL":
        url = settings.alert_webhook_url
        if url is None:  # blank: no webhook
            return
        WebhookChannel(url)
        assert httpx.Client().build_request("POST", url).url.host
    elif name == "OMETER_SMTP_HOST":
        host = settings.smtp_host
        if host is None:  # blank: no email
            return
        assert host == host.strip() and not any(c.isspace() for c in host)
        assert ":" not in host or host.count(":") > 1  # an IPv6 address, never host:port
    elif settings.email_recipients or name == "OMETER_SMTP_FROM":
        message = EmailMessage()
        message["From"] = settings.smtp_from
        message["To"] = ", ".join(settings.email_recipients)
        for header, given in (("From", [settings.smtp_from]), ("To", settings.email_recipients)):
            parsed = getaddresses([str(message[header])])
            assert len(parsed) == len(given)
            assert all(address.count("@") == 1 for _, address in parsed)


@given(
    name=st.sampled_from(sorted(CHANNEL_VALUES)),
    value=st.data(),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_alert_channel_setting_is_usable_or_a_one_line_error_naming_it(
    name: str, value: st.DataObject
) -> None:
    """The webhook URL was checked for its scheme only and the email settings not at all: a
    typo failed every alert later, unseen (`http://[bad` ended `ometer chat` as a bug, exit
    70; `a@b;c@d` mailed only a@b; a line break in an address failed every send). The error
    says a webhook URL by its host: its path and credentials are secrets."""
    raw = value.draw(
        st.sampled_from(CHANNEL_VALUES[name])
        | st.text(max_size=12).filter(lambda t: "\x00" not in t)
    )
    with pytest.MonkeyPatch.context() as env:
        for companion, usable in _EMAIL_PAIR.items():  # email needs both: the other is set
            if name != companion and (name in _EMAIL_PAIR or name == "OMETER_SMTP_FROM"):
                env.setenv(companion, usable)
        env.setenv(name, raw)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            refused = str(exc)
        else:
            refused = ""
    if refused:
        # A blank list of recipients beside the SMTP server set for it: the pair is named.
        named = {name, *_EMAIL_PAIR} if name in _EMAIL_PAIR else {name}
        assert refused.split(": ")[0] in named and "\n" not in refused
        assert "SECRET" not in refused  # a webhook's path is its credential
        return
    _usable(name, loaded)


@pytest.mark.parametrize(
    ("given", "missing"),
    [("OMETER_ALERT_EMAIL_TO", "OMETER_SMTP_HOST"), ("OMETER_SMTP_HOST", "OMETER_ALERT_EMAIL_TO")],
)
def test_email_alerts_half_set_up_are_one_error_line_not_silence(
    given: str, missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recipients with no SMTP server (or the reverse) sent no email and said nothing: a
    threshold crossed went unseen."""
    monkeypatch.setenv(given, _EMAIL_PAIR[given])
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == (
        f"{given}: set, but {missing} is not, so budget alerts would go out by no email: "
        f"set {missing} too, or unset {given}"
    )
    monkeypatch.setenv(missing, _EMAIL_PAIR[missing])
    assert load_settings().email_recipients == ["it@example.org"]


@pytest.mark.parametrize(
    ("host", "zone"),
    [
        ("right/Europe/Berlin", "Europe/Berlin"),
        ("posix/Asia/Kolkata", "Asia/Kolkata"),
        ("Europe/Berlin", "Europe/Berlin"),
        ("localtime", "UTC"),
    ],
)
def test_the_hosts_zone_is_read_without_its_leap_seconds(
    monkeypatch: pytest.MonkeyPatch, host: str, zone: str
) -> None:
    """A host set to a ``right/`` zone keeps its civil time, not a zone Python reads wrong."""
    import tzlocal

    monkeypatch.setattr(tzlocal, "get_localzone_name", lambda: host)
    assert system_timezone() == zone


@pytest.mark.parametrize(
    ("tz", "zone"),
    [
        ("EST5EDT", "EST5EDT"),
        ("PST8PDT", "PST8PDT"),
        (":CST6CDT", "CST6CDT"),
        ("Europe/Berlin", "Europe/Berlin"),
        ("right/Australia/Lord_Howe", "Australia/Lord_Howe"),
        ("/usr/share/zoneinfo/America/Sao_Paulo", "America/Sao_Paulo"),
    ],
)
def test_the_hosts_zone_is_the_tz_its_clock_is_read_in(
    monkeypatch: pytest.MonkeyPatch, tz: str, zone: str
) -> None:
    """TZ names the zone every program of the host reads its clock in (``date``, cron, the
    logs): tzlocal took only the names it maps to a Windows zone, and EST5EDT, PST8PDT (IANA
    zones, in the tzdata every machine has) were passed over for /etc/timezone: a host in
    New York cut its days at UTC midnight, five hours off, saying so only in a heading."""
    if tz.startswith("/") and not Path(tz).exists():
        pytest.skip(f"this machine has no {tz}")
    monkeypatch.setenv("TZ", tz)
    monkeypatch.delenv("OMETER_TIMEZONE")
    assert system_timezone() == zone
    assert load_settings().timezone == zone


@pytest.mark.parametrize(
    "tz", ["CET-1CEST,M3.5.0,M10.5.0/3", "EST5", "<+0330>-3:30", "Mars/Olympus"]
)
def test_a_tz_that_is_no_zone_name_is_said_with_the_zone_periods_are_cut_in(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tz: str
) -> None:
    """A POSIX rule (a container's ``TZ=CET-1CEST,M3.5.0,M10.5.0/3``) sets the host's clock, and
    no zone name says which zone it is: the days were cut in /etc/timezone's zone (UTC in a
    container) without a word. Said once, naming the setting to give."""
    import tzlocal

    monkeypatch.setattr(tzlocal, "get_localzone_name", lambda: "Etc/UTC")
    monkeypatch.setenv("TZ", tz)
    monkeypatch.delenv("OMETER_TIMEZONE")
    assert load_settings().timezone == "Etc/UTC"
    load_settings()
    said = [r.getMessage() for r in caplog.records if "TZ" in r.getMessage()]
    assert said == [
        f"TZ={tz!r} names no time zone ometer can read (a zone's name, such as Europe/Berlin): "
        "days, weeks and months are cut in Etc/UTC; set OMETER_TIMEZONE to the zone's name"
    ]
    monkeypatch.setenv("OMETER_TIMEZONE", "Europe/Berlin")
    caplog.clear()
    monkeypatch.setenv("TZ", tz + " ")  # another value, with the zone given: nothing to say
    assert load_settings().timezone == "Europe/Berlin"
    assert not [r for r in caplog.records if "TZ" in r.getMessage()]


@given(
    host=st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
    at=st.integers(min_value=0, max_value=7),
    bad=st.sampled_from("\t\n\r\x00\x1f\x7f\x85 "),
    form=st.sampled_from(["http://{}:11434", "{}", "{}:8080", "https://{}/proxy"]),
)
def test_a_control_character_inside_an_ollama_url_is_an_error_never_dropped(
    host: str, at: int, bad: str, form: str
) -> None:
    """urlsplit quietly drops a tab or line break anywhere in a URL: ``gpu\\n1`` was taken
    for a server named ``gpu1``, another machine than the one given."""
    given = form.format(host[:at] + bad + host[at:])
    assume(given == given.strip())  # blanks around the value are taken off, as in any setting
    with pytest.raises(ValueError) as caught:
        normalize_host(given)
    assert str(caught.value) == (
        f"{given!r} has a space, line break or control character in it; expected a URL "
        "such as http://127.0.0.1:11434"
    )
    if "\x00" in given:  # no environment variable can hold it
        return
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMETER_UPSTREAMS", f"http://gpu0:11434,{given}")
        with pytest.raises(ConfigError) as refused:
            load_settings()
    assert str(refused.value) == f"OMETER_UPSTREAMS: {caught.value}"


CREDENTIALS = {
    "TRACELOOP_API_KEY": {},
    "LANGFUSE_PUBLIC_KEY": {"LANGFUSE_SECRET_KEY": "sk-lf-1", "LANGFUSE_HOST": "http://lf:3000"},
    "LANGFUSE_SECRET_KEY": {"LANGFUSE_PUBLIC_KEY": "pk-lf-1", "LANGFUSE_HOST": "http://lf:3000"},
    "OMETER_SMTP_USER": _EMAIL_PAIR,
    "OMETER_SMTP_PASSWORD": {**_EMAIL_PAIR, "OMETER_SMTP_USER": "ometer"},
}
"""Keys and logins ometer sends on: each beside the settings that make it used."""


@example(name="TRACELOOP_API_KEY", raw="tl-key\n")  # a secret file's line break
@example(name="TRACELOOP_API_KEY", raw="tl\nkey")
@example(name="LANGFUSE_SECRET_KEY", raw="sk\r\nX-Evil: 1")
@example(name="LANGFUSE_PUBLIC_KEY", raw="pk-lf:1")  # would end the key early in Basic auth
@example(name="LANGFUSE_PUBLIC_KEY", raw="a ':'")  # the refusal's own words say "has a ':' in it"
@example(name="OMETER_SMTP_PASSWORD", raw="pässwort")  # smtplib's login sends ASCII only
@example(name="OMETER_SMTP_PASSWORD", raw="s3cret\n")
@example(name="OMETER_SMTP_USER", raw="jürgen")
@given(
    name=st.sampled_from(sorted(CREDENTIALS)),
    raw=st.text(max_size=12).filter(lambda t: "\x00" not in t),
)
def test_a_key_or_login_is_usable_where_it_goes_or_a_one_line_error_naming_it(
    name: str, raw: str
) -> None:
    """A key with a line break (read from a secret file with it) or a character no HTTP
    header carries failed every export unsent, "dropped until it answers" while the
    collector was up; a login that is not ASCII failed every alert email (smtplib sends
    ASCII only), both never said at start-up. The error never shows the value."""
    import base64

    from requests.utils import check_header_validity

    def load(raw: str) -> tuple[Any, str]:
        with pytest.MonkeyPatch.context() as env:
            for companion, value in CREDENTIALS[name].items():
                env.setenv(companion, value)
            env.setenv(name, raw)
            try:
                return load_settings(), ""
            except ConfigError as exc:
                return None, str(exc)

    loaded, refused = load(raw)
    if refused:
        assert refused.startswith(f"{name}: ") and "\n" not in refused
        # The same words for any value with the same fault: none of it is shown ("a ':'"
        # could be a value, and is in the words)
        masked = "".join(
            "Q" if c.isascii() and c.isprintable() and c not in " :" else c for c in raw
        )
        assert refused == load(masked)[1]
        return

    def secret(value: Any) -> str:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value or ""

    if name == "TRACELOOP_API_KEY":
        key = secret(loaded.traceloop_api_key)
        if key:
            check_header_validity(("authorization", f"Bearer {key}"))
            assert key == key.strip() and key.isascii()
    elif name.startswith("LANGFUSE_"):
        public, private = loaded.langfuse_public_key or "", secret(loaded.langfuse_secret_key)
        if public and private:
            token = base64.b64encode(f"{public}:{private}".encode()).decode()
            check_header_validity(("authorization", f"Basic {token}"))
            assert base64.b64decode(token).decode().split(":", 1) == [public, private]
            assert public == public.strip() and private == private.strip()
    else:
        user, password = loaded.smtp_user or "", secret(loaded.smtp_password)
        f"\0{user}\0{password}".encode("ascii")  # as smtplib's AUTH PLAIN sends it
        assert "\0" not in user + password and "\n" not in user + password


@given(
    url=st.sampled_from(
        [
            "postgresql+psycopg://ometer:{}@db:badport/ledger",
            "postgresql+psycopg://ometer:{}@db:99999999999/ledger",
            "postgres ql://ometer:{}@db/ledger",
            "postgresql+psycopg://ometer:{}@db/l\udcffedger",
        ]
    ),
    password=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=6).map(
        # a password may hold an @ as it is; "pw" and "Z" keep either half from being a piece
        # of the rest of the URL (a port's digits)
        lambda p: f"pw{p[:3]}@{p[3:]}Z"
    ),
)
def test_a_database_url_that_is_refused_never_shows_its_password(url: str, password: str) -> None:
    """``OMETER_DB_URL`` refused was repeated whole in the error, password and all, for the
    terminal and every log that keeps it; one with a port that is no number was refused in
    Python's words ("invalid literal for int() with base 10")."""
    value = url.format(password)
    with pytest.raises(ConfigError) as caught:
        load_settings(db_url=value)
    message = str(caught.value)
    assert message.startswith("OMETER_DB_URL: '") and "\n" not in message
    assert all(part not in message for part in password.split("@"))
    assert "ometer:***@db" in message
    assert "invalid literal" not in message
    assert any(
        said in message
        for said in ("expected e.g. sqlite:////path/ledger.db", "is not UTF-8", "written %40")
    )


_SECRET = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_", min_size=8, max_size=40)  # fmt: skip
_MISTYPED = [
    "Authorization: Bearer {s}",  # a header as HTTP writes it
    "Authorization: Basic {s}==",  # base64's padding: an '=' inside the value
    "x-team=ops,{s}",  # a value's comma not URL-encoded: its rest is a pair of its own
    "api-key {s}",
    "{s}",
    "x-team=ops, Bearer {s}=x",
    'Authorization=Bearer "{s}"',  # a space is fine; a quote, tab or ; is not
    "Authorization=Bearer\t{s}",
    "Authorization=Bearer;{s}",
]


@given(secret=_SECRET.map(lambda s: "sk0" + s), form=st.sampled_from(_MISTYPED))
def test_a_collectors_headers_refused_never_show_their_values(secret: str, form: str) -> None:
    """The error reaches terminals and logs read by more people than the configuration: a
    bearer token written ``Authorization: Bearer sk-...`` (HTTP's way, a common slip) was
    shown whole, as was the rest of any value cut at an unencoded comma."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_HEADERS", form.format(s=secret))
        with pytest.raises(ConfigError) as caught:
            load_settings()
    said = str(caught.value)
    assert said.startswith("OTEL_EXPORTER_OTLP_HEADERS: ") and "\n" not in said
    assert secret not in said


@given(secret=_SECRET.map(lambda s: "sk0" + s.replace("/", "%2F")))  # a URL's own spelling
@example(secret="sk0p@ss")  # an '@' not encoded: the login ends at the last one
@pytest.mark.parametrize(
    ("form", "names"),
    [
        ("http://ollama:{s}@gpu1:99999", ("OLLAMA_HOST", "OMETER_UPSTREAMS")),  # no port
        ("http://ollama:{s}@gpu 1:11434", ("OLLAMA_HOST", "OMETER_UPSTREAMS")),
        ("ftp://ollama:{s}@gpu1", ("OLLAMA_HOST", "OMETER_UPSTREAMS")),
        ("ollama:{s}@gpu1:x", ("OLLAMA_HOST", "OMETER_UPSTREAMS")),
        ("http://{s}@gpu1:11434#slots=x", ("OMETER_UPSTREAMS",)),
        ("http://a:1,http://ollama:{s}@gpu1:11434#slots=0", ("OMETER_UPSTREAMS",)),
    ],
)
def test_an_ollama_url_refused_never_shows_its_login(
    secret: str, form: str, names: tuple[str, ...]
) -> None:
    """An Ollama behind a proxy asking for a login is named ``http://user:password@host``:
    a URL refused for its port or its #slots was shown whole, password and all, in an error
    that reaches terminals and logs (a database URL's password never was)."""
    for name in names:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(name, form.format(s=secret))
            with pytest.raises(ConfigError) as caught:
                load_settings()
        assert str(caught.value).startswith(f"{name}: ")
        assert secret not in str(caught.value), name


_LABEL = st.text(alphabet="az09-_äß☃", min_size=0, max_size=70)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=6).map(".".join),
    st.lists(st.integers(0, 999), min_size=4, max_size=4).map(lambda n: ".".join(map(str, n))),
    st.integers(1, 300).map(lambda n: ("a" * 62 + ".") * (n // 63) + "a" * (n % 63 or 1)),
)


@given(host=_HOSTS, form=st.sampled_from(["http://{}:11434", "{}", "https://{}/proxy"]))
@example(host="999.1.1.1", form="http://{}:11434")
@example(host="a" * 64, form="{}")
@example(host="ä" * 62, form="{}")
@example(host="a" * 10_000_000, form="{}")
def test_an_ollama_address_is_one_httpx_and_the_socket_take_or_one_short_line(
    host: str, form: str
) -> None:
    """An address httpx refuses (an IPv4 address past 255, a name IDNA 2008 cannot write, one
    past its 65,536 characters) was taken, then raised httpx.InvalidURL with a traceback from
    MeteredClient() or at each gateway call; one the socket refuses (a part of a name past 63
    characters, or empty) made each call's span a malformed request's ('encoding with idna
    codec failed'). Now each is a ConfigError when the settings are read, in a short line."""
    import httpx

    given = form.format(host)
    try:
        url = normalize_host(given)
    except ValueError as refused:
        message = str(refused)
        assert "\n" not in message and len(message) < 500
        return
    parsed = httpx.URL(url)
    httpx.Client(base_url=url).close()
    if ":" not in parsed.host:  # the socket writes the name as IDNA 2003 does
        parsed.raw_host.decode("ascii").encode("idna")


@pytest.mark.parametrize("host", ["http://999.1.1.1", "http://" + "a" * 64, "http://a..b"])
def test_a_client_given_an_address_no_call_can_go_to_is_refused_when_made(
    host: str, sqlite_url: str
) -> None:
    from ollama_meter import MeteredClient

    with pytest.raises(ConfigError, match=r"^OLLAMA_HOST: 'http://[a-z0-9.]+' has a host"):
        MeteredClient(host, db_url=sqlite_url)


TIMERS = {  # name: (field, least and most seconds)
    "OMETER_UPSTREAM_TIMEOUT": ("upstream_timeout", 0.001, 86_400),
    "OMETER_BREAKER_RESET": ("breaker_reset", 0.001, 86_400),
    "OMETER_EXPORT_TIMEOUT": ("export_timeout", 0.001, 3_600),
    "OMETER_LEDGER_WAIT": ("ledger_wait", 0.001, 600),
    # Every server's models read again and again: 0.001 took a third of a core with no calls.
    "OMETER_DISCOVERY_INTERVAL": ("discovery_interval", 0.1, 3_600),
}


@given(
    name=st.sampled_from(sorted(TIMERS)),
    seconds=st.one_of(
        st.floats(min_value=0, max_value=0.001, exclude_min=True),
        st.floats(min_value=0.001, max_value=86_400),
        st.sampled_from([1e-300, 5e-324, 1e-9, 0.000999, 0.001, 0.0010001, 0.0999, 0.1]),
    ),
)
def test_a_timer_under_its_floor_is_refused_naming_the_setting_and_the_floor(
    name: str, seconds: float
) -> None:
    """``OMETER_UPSTREAM_TIMEOUT=1e-300`` was taken: a call given less than a millisecond can
    only time out, and an interval that short spins. Every timer setting has a floor."""
    field, least, most = TIMERS[name]
    given_as = repr(seconds)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(name, given_as)
        try:
            taken: float | str = getattr(load_settings(), field)
        except ConfigError as exc:
            taken = str(exc)
    if least <= seconds <= most:
        assert taken == seconds
    else:
        assert taken == f"{name}: {given_as!r} is not a number from {least:g} to {most:,}"


@pytest.mark.parametrize("value", ["", "  ", "\t"])
def test_an_empty_ollama_host_is_the_default_address_as_ollama_takes_it(
    cli, monkeypatch: pytest.MonkeyPatch, sqlite_url: str, value: str
) -> None:  # type: ignore[no-untyped-def]
    """Ollama and the ``ollama`` client read ``OLLAMA_HOST=`` (set, but empty) as their
    default address; ometer refused it ("OLLAMA_HOST: is empty") in every command, a
    report too, so a shell that exports it empty could run Ollama but not ometer."""
    from ollama_meter.cli.serve import serve_settings

    monkeypatch.setenv("OLLAMA_HOST", value)
    monkeypatch.delenv("OMETER_UPSTREAMS", raising=False)
    assert load_settings().ollama_host == "http://127.0.0.1:11434"
    specs = serve_settings(None, slots=None, max_queue=None, db=sqlite_url).upstream_specs
    assert [s.url for s in specs] == ["http://127.0.0.1:11434"]  # --upstream's default
    done = cli("budget", "set", "sales", "--daily", "5", "--db", sqlite_url)
    assert done.code == 0, done.stderr
    # MeteredClient(host=""), as ollama.Client(host="")
    assert load_settings(ollama_host=value).ollama_host == "http://127.0.0.1:11434"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ('""', "http://127.0.0.1:11434"),
        ("''", "http://127.0.0.1:11434"),
        ('"http://gpu1:11434"', "http://gpu1:11434"),
        (" 'gpu1' ", "http://gpu1:11434"),
    ],
)
def test_a_quoted_ollama_host_is_read_as_ollama_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str, url: str
) -> None:
    """Ollama trims the quotes around OLLAMA_HOST (a docker env_file passes them on as they
    are): ``OLLAMA_HOST=""`` was taken as a server named ``""`` (http://"":11434), every call
    to it failing, and a quoted URL was refused, where Ollama reads both."""
    monkeypatch.setenv("OLLAMA_HOST", value)
    assert load_settings().ollama_host == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OMETER_TIMEZONE", "Europe/Berlin"),
        ("OMETER_CURRENCY", "EUR"),
        ("OMETER_DEPARTMENT", "sales"),
        ("OMETER_RETRIES", "2"),
        ("OMETER_CAPTURE_CONTENT", "1"),
        ("OMETER_DB_URL", "sqlite:////var/lib/ometer/ledger.db"),
        ("DEPARTMENT_BUDGETS", '{"sales": {"daily": 5}}'),
    ],
)
@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_value_in_quotes_is_told_they_are_part_of_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, quote: str
) -> None:
    """``docker run --env-file`` keeps the quotes of ``OMETER_TIMEZONE="Europe/Berlin"``: the
    value was refused as not a zone, the quotes in it unremarked, and each setting taken in
    turn by an admin who could not see what was wrong with 'Europe/Berlin'."""
    monkeypatch.setenv(name, value)
    load_settings()  # as it is, it is taken
    monkeypatch.setenv(name, f"{quote}{value}{quote}")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert said.startswith(f"{name}: ")
    assert said.endswith(
        "; the quotes are part of the value as given: remove them (docker's --env-file keeps them)"
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    env=st.sampled_from([None, "env-t", "  "]),
    dotenv=st.sampled_from([None, "", "OMETER_TENANT=file-t\nOMETER_DEPARTMENT=ops\n", "X=1\n"]),
)
def test_each_load_reads_the_environment_and_dotenv_as_they_are_then(
    env: str | None, dotenv: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a load keeps from the last (each field's environment names) never keeps a value:
    a variable or ``.env`` set, changed or removed since is read as it is now."""
    if env is None:
        monkeypatch.delenv("OMETER_TENANT", raising=False)
    else:
        monkeypatch.setenv("OMETER_TENANT", env)
    if dotenv is None:
        (tmp_path / ".env").unlink(missing_ok=True)
    else:
        (tmp_path / ".env").write_text(dotenv)
    in_file = bool(dotenv and dotenv.startswith("OMETER_"))
    if env is not None and not env.strip():
        with pytest.raises(ConfigError, match="^OMETER_TENANT: "):
            load_settings(warn=False)
        return
    cfg = load_settings(warn=False)
    assert cfg.tenant == (env or ("file-t" if in_file else "default"))
    assert cfg.department == ("ops" if in_file else "unassigned")


def test_a_load_works_out_each_fields_environment_names_once_a_process() -> None:
    """pydantic-settings worked out each field's names and kind from its annotation at every
    load, for the environment and ``.env`` each: 4 ms of a load's 5, repeated at each
    command a suite runs in-process, tens of thousands of times."""
    from pydantic_settings import EnvSettingsSource

    fields = len(Settings.model_fields)
    asked = 0
    real = EnvSettingsSource._field_is_complex

    def counted(self: EnvSettingsSource, field: Any) -> tuple[bool, bool]:
        nonlocal asked
        asked += 1
        return real(self, field)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EnvSettingsSource, "_field_is_complex", counted)
        patch.setenv("OMETER_TENANT", "acme")
        for _ in range(5):
            assert load_settings(warn=False).tenant == "acme"
    assert asked <= 2 * fields  # the environment's source and .env's, once each at most


@settings(max_examples=40)
@given(
    field=st.sampled_from(sorted(Settings.model_fields)),
    spelled=st.sampled_from([str.upper, str.lower]),
)
def test_a_variable_named_as_a_settings_field_is_not_that_setting(field: str, spelled: Any) -> None:
    """Only the names ometer documents are its settings. A field's own name was read too
    (any case): ``DB_URL`` or ``LOG_LEVEL``, which many an app's environment holds for
    itself, set ometer's ledger or log level (``ometer run -- app`` wrote the spans into
    the app's own database)."""
    documented = _environment_name(field)
    if documented.lower() == field:
        return  # OLLAMA_HOST is its field's name
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(Path(__file__).parent)  # no .env here
        unset = load_settings(warn=False)
        patch.setenv(spelled(field), "sqlite:////elsewhere/x.db" if field == "db_url" else "9")
        assert load_settings(warn=False) == unset


def _environment_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


@given(
    scheme=st.sampled_from(["http", "https"]).flatmap(
        lambda s: st.tuples(*[st.sampled_from([c, c.upper()]) for c in s]).map("".join)
    ),
    rest=st.sampled_from(["collector:4317", "127.0.0.1:4318/otlp", "[::1]:4318/", "Host.Example"]),
)
def test_an_http_url_setting_has_its_scheme_in_lower_case(scheme: str, rest: str) -> None:
    """A scheme is the same in any case (RFC 3986): ``HTTP://`` passed as an http URL, and
    what read it by its text (a gRPC exporter is plain for ``http://`` only) took it for TLS."""
    url = f"{scheme}://{rest}"
    assert http_url(url, "http://collector:4318") == f"{scheme.lower()}://{rest}"
