"""The ``OTEL_*`` variables the OpenTelemetry SDK reads on its own are checked like ometer's.

The SDK and its exporters read span limits, the batch delay, compression, exemplar filter,
timeouts and certificate files from the environment themselves. A malformed one was a
ValueError ometer called a bug of its own, a traceback in the log, or an export that failed
at every call without a word; now it is one ``error:`` line naming it, before any call.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import load_settings
from ollama_meter._environment import _GRPC_CODES
from ollama_meter.errors import ConfigError
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.testing import unreachable_url

CHECKED = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_METRICS_EXEMPLAR_FILTER",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_GRPC_TRACES_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
)
VALUES = st.one_of(
    st.sampled_from(
        [
            *("", " ", "0", "1", "-1", "5000", " 7 ", "1.5", "nan", "unset", "UNSET", "abc"),
            *("gzip", " GZIP ", "deflate", "none", "zip", "trace_based", "always_on", "Always_On"),
            *("true", " TRUE ", "false", "False", "yes"),
            *(" Delta ", "cumulative", "LowMemory", "explicit_bucket_histogram", "exponential"),
            *("base2_exponential_bucket_histogram", "a=b", "a=b,", "=b", "a=%zz,b = c", ","),
            *("otel", "host, process", "*", "nosuch", "otel,,os"),
            *("unavailable", " Unavailable , RESOURCE_EXHAUSTED,", "unavailable,nope"),
        ]
    ),
    st.integers(-(10**6), 10**6).map(str),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
)


class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def sdk_log() -> Iterator[_Said]:
    """What the SDK logs while it is set up (ometer mutes it once set up: unmute it here)."""
    said = _Said()
    sdk = logging.getLogger("opentelemetry")
    level = sdk.level
    sdk.addHandler(said)
    yield said
    sdk.removeHandler(said)
    sdk.setLevel(level)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.sampled_from(CHECKED), value=VALUES, grpc=st.booleans(), langfuse=st.booleans())
def test_an_sdk_variable_is_an_error_line_naming_it_or_the_sdk_takes_it_without_a_word(
    monkeypatch: pytest.MonkeyPatch,
    sdk_log: _Said,
    name: str,
    value: str,
    grpc: bool,
    langfuse: bool,
) -> None:
    url = unreachable_url()
    with monkeypatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc" if grpc else "http/protobuf")
        if langfuse:  # always over http, whatever the protocol: both must take the value
            env.setenv("LANGFUSE_PUBLIC_KEY", "pk")
            env.setenv("LANGFUSE_SECRET_KEY", "sk")
            env.setenv("LANGFUSE_HOST", url)
        env.setenv(name, value)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{name}: {value!r} ") and "\n" not in message
            return
        sdk_log.lines.clear()
        logging.getLogger("opentelemetry").setLevel(logging.NOTSET)
        telemetry = Telemetry(loaded)  # raised, or logged a traceback, for a value it refused
        try:
            assert sdk_log.lines == []
        finally:
            telemetry.timeout = 0.01
            telemetry.shutdown()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
            "abc",
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT: 'abc' is not a whole number 0 or more (or "
            "empty, for no limit); fix or unset it",
        ),
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            "0",
            "OTEL_BSP_SCHEDULE_DELAY: '0' is not a whole number of milliseconds above 0; "
            "fix or unset it",
        ),
        (
            "OTEL_METRICS_EXEMPLAR_FILTER",
            "bogus",
            "OTEL_METRICS_EXEMPLAR_FILTER: 'bogus' is not one of trace_based, always_on, "
            "always_off; fix or unset it",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/no/such/ca.pem",
            "OTEL_EXPORTER_OTLP_CERTIFICATE: '/no/such/ca.pem' is not a file that can be "
            "read; give the PEM file's path or unset it",
        ),
        (  # the SDK printed a traceback, then went on without it
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
            "otel,nosuch",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS: 'otel,nosuch' is not a list of resource "
            "detectors installed (host, os, otel, process, service_instance); fix or unset it",
        ),
        (  # the SDK printed a raw line, then left the pair out
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=ml,oops",
            "OTEL_RESOURCE_ATTRIBUTES: 'team=ml,oops' is not key=value pairs separated by "
            "commas; fix or unset it",
        ),
        (  # bytes that are not UTF-8: the pair was left out of every export without a word
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=ml,site=m\udce9nchen",
            "OTEL_RESOURCE_ATTRIBUTES: 'team=ml,site=m\\udce9nchen' is not UTF-8 text "
            "(percent-encode other bytes, e.g. %C3%A9); fix or unset it",
        ),
        (  # the SDK printed a raw line, then exported cumulative
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "deltas",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'deltas' is not one of "
            "cumulative, delta, lowmemory; fix or unset it",
        ),
    ],
)
def test_a_bad_sdk_variable_is_one_error_line_before_any_call(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    message: str,
) -> None:
    """The chat went ahead (an ``unexpected ValueError ... bug in ometer``), or the SDK
    printed a traceback and went on, or every export failed saying only where to."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    monkeypatch.setenv(name, value)
    done = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 2
    assert done.stderr.strip() == f"error: {message}"


def test_the_sdk_variables_are_not_read_when_nothing_is_exported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without an exporter the SDK is never loaded: its variables are none of ometer's business."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "soon")
    assert not load_settings().telemetry_configured


HEADERS = (
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            *("", " ", "a=b", "x-key=v%20w", "Authorization: Bearer x", "a", "=b", "a=b,c"),
            *("a b=c", "a=b,,c=d", "a=%0d%0aX-Evil=1", "Authorization=Bearer x", "a=b;c"),
            *('a="b"', "a=\u00e9", "a=b\\c", "a=\tb", " a = b ", "a\t=b"),
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.sampled_from(HEADERS), value=HEADER_VALUES, grpc=st.booleans())
def test_headers_are_an_error_line_naming_them_or_sent_without_a_word(
    monkeypatch: pytest.MonkeyPatch, sdk_log: _Said, name: str, value: str, grpc: bool
) -> None:
    """The SDK reads ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` (``_METRICS_``) on its own, and a pair
    it could not read (there, or a value with ``;``, ``"`` or a non-ASCII character in the
    general one, which ometer passed) was a raw ``Header format invalid!`` line and left out:
    a collector that needs the key refused every export while ometer said nothing was wrong."""
    with monkeypatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc" if grpc else "http/protobuf")
        env.setenv(name, value)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{name}: ") and "\n" not in message
            return
        sdk_log.lines.clear()
        logging.getLogger("opentelemetry").setLevel(logging.NOTSET)
        telemetry = Telemetry(loaded)
        try:
            assert sdk_log.lines == []
        finally:
            telemetry.timeout = 0.01
            telemetry.shutdown()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not a protocol ometer exports by; "
            "use http/protobuf or grpc",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "GRPC ",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'GRPC ' is not a protocol ometer exports by; "
            "use http/protobuf or grpc",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "http",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http' is not a protocol ometer exports by; "
            "use http/protobuf or grpc",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "Authorization: Bearer x",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'Authorization' is written name: value, not "
            "name=value; "
            "give comma-separated pairs such as Authorization=Bearer%20TOKEN (values URL-encoded)",
        ),
    ],
)
def test_a_bad_protocol_or_signal_header_is_one_plain_error_line(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    message: str,
) -> None:
    """``http/json`` (a protocol the spec names, which ometer does not send) was "String should
    match pattern '^(http/protobuf|grpc)$'"; a signal's own protocol was ignored, its spans
    sent over http to a grpc port."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    monkeypatch.setenv(name, value)
    done = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 2
    assert done.stderr.strip() == f"error: {message}"


SAMPLERS = st.sampled_from(
    [
        *("always_on", "always_off", "traceidratio", "parentbased_always_on"),
        *("parentbased_always_off", "parentbased_traceidratio", " TraceIdRatio ", ""),
        *("bogus", "jaeger_remote", "xray", "always-on", "traceidratio,always_on"),
    ]
)
RATES = st.none() | st.one_of(
    st.sampled_from(["", " ", "0", "1", "0.25", " 0.5 ", "1e-3", "abc", "-0.1", "1.5", "2"]),
    st.sampled_from(["nan", "inf", "-inf", "0x1", "1/2", "50%", "0,5"]),
    st.floats(-1, 2, allow_nan=False).map(str),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sampler=SAMPLERS, rate=RATES)
def test_the_sampler_is_an_error_line_naming_it_or_samples_as_asked(
    monkeypatch: pytest.MonkeyPatch, sdk_log: _Said, sampler: str, rate: str | None
) -> None:
    """An unknown ``OTEL_TRACES_SAMPLER`` was replaced by the default without a word a user saw
    (every span sampled); a ratio sampler's ``OTEL_TRACES_SAMPLER_ARG`` that was no number
    (or past 1) was a raw SDK line and sampled everything, and an unset one, which the spec
    says is 1.0, printed that line too."""
    with monkeypatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
        env.setenv("OTEL_TRACES_SAMPLER", sampler)
        if rate is None:
            env.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
        else:
            env.setenv("OTEL_TRACES_SAMPLER_ARG", rate)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            message = str(exc)
            name = "OTEL_TRACES_SAMPLER" + ("_ARG" if message.startswith("OTEL_TRACES_SAMPLER_ARG") else "")  # fmt: skip
            assert (
                message.startswith(f"{name}: {os.environ[name]!r} is not ") and "\n" not in message
            )
            assert name.endswith("_ARG") == (sampler.strip().lower() in RATIO_SAMPLERS)
            return
        sdk_log.lines.clear()
        logging.getLogger("opentelemetry").setLevel(logging.NOTSET)
        telemetry = Telemetry(loaded)
        try:
            assert sdk_log.lines == []
            described = telemetry.tracer_provider.sampler.get_description()
        finally:
            telemetry.timeout = 0.01
            telemetry.shutdown()
    chosen = sampler.strip().lower() or "parentbased_always_on"
    if chosen in RATIO_SAMPLERS:
        probability = float(rate) if rate and rate.strip() else 1.0
        assert 0 <= probability <= 1
        assert f"TraceIdRatioBased{{{probability}}}" in described
        assert described.startswith("ParentBased{") == chosen.startswith("parentbased_")
    else:
        expected = {
            "always_on": "AlwaysOnSampler",
            "always_off": "AlwaysOffSampler",
            "parentbased_always_on": "ParentBased{root:AlwaysOnSampler,",
            "parentbased_always_off": "ParentBased{root:AlwaysOffSampler,",
        }[chosen]
        assert described.startswith(expected)


RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    value=st.sampled_from(
        ["", " ", "billing-gw", " gw ", "a\nb", "tab\there", "\x1b[31mred", "é", "a\u2028b"]
    )
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
)
def test_the_service_name_is_an_error_line_or_exported_as_given(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """``OTEL_SERVICE_NAME=`` made every span's ``service.name`` empty (the spec reads an empty
    variable as unset: the default), and one with a line break or escape went out as it was,
    to break the collector's and Langfuse's lists of services."""
    with monkeypatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
        env.setenv("OTEL_SERVICE_NAME", value)
        try:
            loaded = load_settings()
        except ConfigError as exc:
            message = str(exc)
            assert message == (
                f"OTEL_SERVICE_NAME: {value!r} has a control character or line break; give a "
                "name of printable characters on one line"
            )
            assert any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)
            return
    assert loaded.otel_service_name == (value.strip() or None)
    name = loaded.otel_service_name or ""
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_TRACES_SAMPLER": "bogus"},
            "OTEL_TRACES_SAMPLER: 'bogus' is not one of always_on, always_off, traceidratio, "
            "parentbased_always_on, parentbased_always_off, parentbased_traceidratio; "
            "fix or unset it",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
            "OTEL_TRACES_SAMPLER_ARG: 'abc' is not a probability from 0 to 1 (such as 0.25), "
            "which traceidratio samples by; fix or unset it",
        ),
        (
            {"OTEL_SERVICE_NAME": "billing\r\ngw"},
            "OTEL_SERVICE_NAME: 'billing\\r\\ngw' has a control character or line break; give a name "
            "of printable characters on one line",
        ),
    ],
)
def test_a_bad_sampler_or_service_name_is_one_error_line_before_any_call(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 2
    assert done.stderr.strip() == f"error: {message}"


@pytest.mark.parametrize(
    ("service", "attributes", "exported"),
    [
        (None, None, "ollama-meter"),
        ("", "team=ai", "ollama-meter"),
        (None, "service.name=billing-gw,team=ai", "billing-gw"),
        ("", "service.name=billing-gw", "billing-gw"),  # empty is unset, as the spec reads it
        ("ometer-eu", "service.name=billing-gw", "ometer-eu"),
    ],
)
def test_the_service_name_is_taken_in_the_order_the_spec_gives(
    monkeypatch: pytest.MonkeyPatch, service: str | None, attributes: str | None, exported: str
) -> None:
    """``OTEL_SERVICE_NAME``, else ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else ours:
    the resource attribute was always overwritten with ``ollama-meter``."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    for name, value in (("OTEL_SERVICE_NAME", service), ("OTEL_RESOURCE_ATTRIBUTES", attributes)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    telemetry = Telemetry(load_settings())
    try:
        resource = telemetry.tracer_provider.resource.attributes
        assert resource["service.name"] == exported
        assert resource["service.version"] and resource.get("team") == (
            "ai" if attributes and "team" in attributes else None
        )
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (  # a KeyError "ometer called a bug of its own"
            "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES",
            "unavailable,busy",
            "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES: 'unavailable,busy' is not "
            "a list of gRPC status codes (ok, cancelled, unknown, invalid_argument, "
            "deadline_exceeded, not_found, already_exists, permission_denied, "
            "resource_exhausted, failed_precondition, aborted, out_of_range, unimplemented, "
            "internal, unavailable, data_loss, unauthenticated); fix or unset it",
        ),
        (  # a RuntimeError, the same
            "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER",
            "vault",
            "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER: 'vault' is not a credential "
            "provider installed (none is); fix or unset it",
        ),
    ],
)
def test_a_bad_grpc_exporter_variable_is_one_error_line_before_any_call(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url().replace("http:", "https:"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv(name, value)
    done = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 2
    assert done.stderr.strip() == f"error: {message}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")  # read by grpc only
    assert load_settings().otlp_protocol == "http/protobuf"


def test_the_grpc_codes_checked_are_grpcs_own() -> None:
    import grpc  # type: ignore[import-untyped]

    assert tuple(code.name for code in grpc.StatusCode) == _GRPC_CODES


@pytest.mark.parametrize("signal", ["", "TRACES_", "METRICS_"])
def test_an_http_credential_provider_ometer_would_not_use_is_one_error_line(
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    signal: str,
) -> None:
    """The exporter is given ometer's bounded session, so it never loaded the provider: the
    collector got no credentials and refused every export, said only as a failed export."""
    name = f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal}CREDENTIAL_PROVIDER"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    monkeypatch.setenv(name, "oauth")
    done = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert done.code == 2
    assert done.stderr.strip() == (
        f"error: {name}: 'oauth' is a credential provider ometer's http exporter does not use "
        "(it reads a collector's answer with a session of its own): give the credentials in "
        "OTEL_EXPORTER_OTLP_HEADERS, or export by grpc, and unset it"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # grpc never reads it
    assert load_settings().otlp_protocol == "grpc"
