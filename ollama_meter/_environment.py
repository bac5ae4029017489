"""The environment ometer reads: a ``.env`` checked whole, ``OMETER_`` names that are no
setting (a misspelt one would silently leave its setting at the default) said once, and
the ``OTEL_*`` variables the OpenTelemetry SDK reads on its own checked like ours."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import AfterValidator

from ollama_meter._names import warn_tz
from ollama_meter.errors import ConfigError

_ENV_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
GATEWAY_ENV = frozenset({
    "OMETER_ADMIN_TOKEN", "OMETER_MAX_BODY_BYTES", "OMETER_MAX_HEADER_BYTES", "OMETER_ORIGINS",
    "FORWARDED_ALLOW_IPS",
})  # fmt: skip
"""Variables ``ometer serve`` reads for its own options, beside the settings
(``FORWARDED_ALLOW_IPS`` is uvicorn's name for ``--trusted-proxies``, kept for those who set it)."""
TEST_ENV = "OMETER_TEST_"
"""The prefix of the test suite's own variables (``OMETER_TEST_PG_URL``, ...): never settings."""
_warned: set[str] = set()


def warn_unknown(
    environment: Iterable[str], env_file: Iterable[str], known: frozenset[str]
) -> None:
    """Say, once a process, which ``OMETER_`` names are no setting: a misspelt one would
    silently leave its setting at the default (a key not required, spans never pruned);
    a ``TZ`` naming no zone, where no ``OMETER_TIMEZONE`` is given (the host's is the
    default); and which of ``ometer serve``'s variables a ``.env`` sets, where they are not
    read."""
    log = logging.getLogger("ollama_meter.config")
    for name in (*environment, *env_file):
        if not name.startswith("OMETER_") or name.startswith(TEST_ENV) or name in known | _warned:
            continue
        import difflib

        _warned.add(name)
        meant = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f"; did you mean {meant[0]}?" if meant else "; see `ometer --help` and the README"
        log.warning("%s is not an ometer setting and is ignored%s", name, hint)
    if "OMETER_TIMEZONE" not in {*environment, *env_file}:  # the host's zone: TZ may name none
        warn_tz()
    for name in GATEWAY_ENV.intersection(env_file) - _warned:
        _warned.add(name)
        log.warning(
            "%s in .env is ignored: ometer serve reads it from the environment only; "
            "export it or give its flag",
            name,
        )


def check_env_file(path: Path) -> list[str]:
    """Refuse a ``.env`` that cannot be read whole: python-dotenv skips a line it cannot
    parse (a quote left open) with a warning, and the setting on it would silently be
    the default: a report cut in the wrong zone, a budget not set. The names it sets."""
    if not path.is_file():
        return []
    from dotenv.parser import parse_stream

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f".env: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f".env: cannot be read: {exc.strerror}") from None
    names = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            named = _ENV_NAME.match(binding.original.string)
            what = f" (setting {named.group(1)})" if named else ""
            raise ConfigError(
                f".env line {binding.original.line}{what} cannot be read: is a quote left "
                "open? Fix or remove the line"
            )
        if binding.key:
            names.append(binding.key)
    return names


# -- the OpenTelemetry SDK's own variables -----------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP header name (RFC 9110 token)."""
_HEADER_VALUE = re.compile(r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
"""A header value as the exporters read it: printable ASCII but ``" , ; \\`` (URL-encode those)."""
_HEADER_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def otlp_headers(value: str | None) -> str | None:
    """``value`` if it is ``name=value`` pairs the OTLP exporters read whole; ValueError if not.

    The exporters read the ``OTEL_EXPORTER_OTLP_*HEADERS`` pairs themselves and leave out one
    they cannot read (a log line at most), so a collector that needs it refuses every export
    while nothing says why. The pairs are split, trimmed and matched as the exporters do.
    The error names a pair by its header name, or its place: never a value, which is a
    collector's key (the error reaches terminals and logs).
    """
    if not value:
        return None
    pairs = _HEADER_SEPARATOR.split(value)
    for place, given in enumerate(pairs, 1):
        if not given:  # between two commas: skipped (blanks are not: the exporters say so)
            continue
        item = given.strip()
        name, equals, encoded = item.partition("=")
        name, encoded = name.rstrip(" \t"), encoded.lstrip(" \t")
        if not equals or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{_pair_said(item, place, len(pairs))}; {_PAIRS}")
        if not _HEADER_VALUE.fullmatch(encoded):
            raise ValueError(
                f"the value of {name!r} has a character to URL-encode (a quote, comma, "
                "semicolon, backslash, tab, control or non-ASCII character): write it as %XX, "
                "such as %3B for ;"
            )
        if any(c in unquote(encoded) for c in "\r\n\x00"):
            raise ValueError(f"the value of {name!r} has a line break or NUL in it")
    return value


_PAIRS = "give comma-separated pairs such as Authorization=Bearer%20TOKEN (values URL-encoded)"


def _pair_said(item: str, place: int, pairs: int) -> str:
    """What is wrong with a pair that is not ``name=value``, by its name where it starts with
    one (``Authorization: Bearer ...``, HTTP's way), else by its place (the rest of a value
    cut at a comma not URL-encoded)."""
    head, colon, _ = item.partition(":")
    if colon and _HEADER_NAME.fullmatch(head.rstrip(" \t")):
        return f"{head.rstrip(' ')!r} is written name: value, not name=value"
    where = f"pair {place} of {pairs}" if pairs > 1 else "it"
    cut = " (the rest of a value whose comma is not written %2C?)" if place > 1 else ""
    return f"{where} is not name=value{cut}"


def sdk_disabled(value: str | None) -> bool:
    """Whether ``OTEL_SDK_DISABLED`` turns the SDK off, read as the SDK reads it. Off, its
    tracer makes spans that record nothing, with all-zero ids: the ledger rows took those."""
    return (value or "").strip().lower() == "true"


def otlp_protocol(value: str | None, *, general: bool) -> str | None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL`` (``general``) or a signal's own, which when unset or
    empty is the general one's (None), as the spec says; ValueError for one ometer lacks."""
    if not value:
        return "http/protobuf" if general else None
    if value not in ("http/protobuf", "grpc"):
        raise ValueError(
            f"{value!r} is not a protocol ometer exports by; use http/protobuf or grpc"
        )
    return value


def otlp_exporter(value: str | None) -> str:
    """``OTEL_TRACES_EXPORTER`` or ``OTEL_METRICS_EXPORTER``: ``otlp`` (unset, empty, or a list
    of ``otlp``) or ``none`` (that signal is not exported over OTLP), read trimmed in any case
    as the SDK reads them; ValueError for an exporter ometer has not (``console``, ``zipkin``)."""
    names = {name.strip().lower() for name in (value or "").split(",")} - {""}
    if names <= {"otlp"} or names == {"none"}:
        return "none" if names == {"none"} else "otlp"
    raise ValueError(f"{value!r} is not an exporter ometer has; use otlp or none")


Exporter = Annotated[str, AfterValidator(otlp_exporter)]
"""A signal's exporter setting, as :func:`otlp_exporter` reads it."""


_SDK_LIMITS = tuple(
    f"OTEL_{name}"
    for name in (
        "ATTRIBUTE_COUNT_LIMIT",
        "ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "SPAN_ATTRIBUTE_COUNT_LIMIT",
        "SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "SPAN_EVENT_COUNT_LIMIT",
        "SPAN_LINK_COUNT_LIMIT",
        "EVENT_ATTRIBUTE_COUNT_LIMIT",
        "LINK_ATTRIBUTE_COUNT_LIMIT",
    )
)
DAY_MS = 86_400_000
"""The longest metric export interval taken: past ``threading.TIMEOUT_MAX`` the SDK's export
thread died, and no metric went until exit."""
_EXEMPLAR_FILTERS = ("trace_based", "always_on", "always_off")
_COMPRESSIONS = {"http": ("none", "deflate", "gzip"), "grpc": ("gzip",)}
"""What each exporter takes (trimmed, any case). The grpc one refuses even ``none``."""
_TLS_FILES = ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY")
_GRPC_CODES = (
    *("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND"),
    *("ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"),
    *("ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"),
    "UNAUTHENTICATED",
)
"""``grpc.StatusCode``'s names (grpc is imported only when it exports)."""
_METRIC_CHOICES = {
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": ("CUMULATIVE", "DELTA", "LOWMEMORY"),
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": (
        "EXPLICIT_BUCKET_HISTOGRAM",
        "BASE2_EXPONENTIAL_BUCKET_HISTOGRAM",
    ),
}
"""What the OTLP metric exporters take; another value was a raw SDK line and the default."""
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
"""The spec's ``OTEL_TRACES_SAMPLER`` values the Python SDK has (not jaeger_remote or xray)."""
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def traces_sampler(environ: Mapping[str, str]) -> tuple[str, float]:
    """``OTEL_TRACES_SAMPLER`` and its probability (1.0 unless a ratio sampler's
    ``OTEL_TRACES_SAMPLER_ARG`` says otherwise); ConfigError for one the SDK cannot take.

    The SDK replaced an unknown sampler with the default, and a probability that was no number
    in [0, 1] with 1.0, saying so only in a raw log line: every span sampled. It printed that
    line for an unset probability too, which the spec says is 1.0. Empty is unset, as the spec
    says; names are read in any case, as the SDK reads them.
    """

    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{name}: {environ[name]!r} is not {expected}; fix or unset it")

    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise bad("OTEL_TRACES_SAMPLER", f"one of {', '.join(SAMPLERS)}")
    given = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if name not in _RATIO_SAMPLERS or not given:  # the others take no argument
        return name, 1.0
    try:
        probability = float(given)
    except ValueError:
        probability = math.nan
    if not 0 <= probability <= 1:  # nan too
        raise bad(
            "OTEL_TRACES_SAMPLER_ARG",
            f"a probability from 0 to 1 (such as 0.25), which {name} samples by",
        )
    return name, probability


_NOT_IN_A_NAME = ("Cc", "Cs", "Zl", "Zp")


def service_name(value: str | None) -> str | None:
    """``OTEL_SERVICE_NAME`` as exported: blanks around it taken off, None when empty (the
    spec reads an empty variable as unset: a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``,
    else ``ollama-meter``; it was exported empty); ValueError for a control character or line
    break, which went out as it was (a lone surrogate, from bytes that are not UTF-8, failed
    every export)."""
    name = (value or "").strip()
    if any(unicodedata.category(c) in _NOT_IN_A_NAME for c in name):
        raise ValueError(
            f"{value!r} has a control character or line break; give a name of printable "
            "characters on one line"
        )
    return name or None


def check_sdk_environment(environ: Mapping[str, str], settings: Any) -> None:
    """Refuse a malformed ``OTEL_*`` variable the OpenTelemetry SDK reads on its own.

    Called only when something is exported (else the SDK is never loaded). The SDK raised a
    ValueError for some (ometer called it a bug of its own), logged a traceback and took its
    default for others, and a missing certificate failed every export saying only where.
    A value must suit each protocol the ``settings``' exporters send by (``http``, ``grpc``:
    Langfuse and Traceloop are http); the exemplar filter is read only if metrics are exported.
    """
    protocols = set()
    for signal in ("traces", "metrics"):
        if settings.otlp_of("endpoint", signal):
            protocols.add("grpc" if settings.otlp_of("protocol", signal) == "grpc" else "http")
    otlp_http = "http" in protocols  # not Langfuse's or Traceloop's: they take no provider
    langfuse = settings.langfuse_public_key and settings.langfuse_secret_key
    if (langfuse and settings.langfuse_host) or settings.traceloop_api_key:
        protocols.add("http")
    metrics = bool(settings.otlp_of("endpoint", "metrics"))

    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{name}: {environ[name]!r} is not {expected}; fix or unset it")

    for name in _SDK_LIMITS:
        if name in environ:
            value = environ[name].strip()
            if value and _integer(value, low=0) is None:  # empty: no limit
                raise bad(name, "a whole number 0 or more (or empty, for no limit)")
    for name in (
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    ):
        if name in environ and _integer(environ[name], low=1) is None:
            unit = " of milliseconds" if name.endswith("DELAY") else ""
            raise bad(name, f"a whole number{unit} above 0")
    traces_sampler(environ)
    name = "OTEL_SDK_DISABLED"  # read as false unless "true": "1" or "yes" would export
    if environ.get(name, "").strip().lower() not in ("", "false"):
        raise bad(name, "true or false")
    name = "OTEL_METRIC_EXPORT_INTERVAL"  # the SDK reads it: ometer once gave its own 60 s
    if metrics and name in environ and _integer(environ[name], low=1, high=DAY_MS) is None:
        raise bad(name, f"a whole number of milliseconds from 1 to {DAY_MS:,} (a day)")
    name = "OTEL_METRICS_EXEMPLAR_FILTER"
    if metrics and name in environ and environ[name] not in _EXEMPLAR_FILTERS:
        raise bad(name, f"one of {', '.join(_EXEMPLAR_FILTERS)}")
    for name, choices in _METRIC_CHOICES.items():  # the exporters read them trimmed, any case
        if metrics and name in environ and environ[name].strip().upper() not in choices:
            raise bad(name, f"one of {', '.join(choice.lower() for choice in choices)}")
    name = "OTEL_RESOURCE_ATTRIBUTES"
    pairs = environ.get(name, "")
    if pairs and any(not key.strip() for key, _, _ in map(_pair, pairs.split(","))):
        raise bad(name, "key=value pairs separated by commas")
    if any(unicodedata.category(c) == "Cs" for c in pairs):  # bytes that are not UTF-8
        raise bad(name, "UTF-8 text (percent-encode other bytes, e.g. %C3%A9)")
    name = "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"
    detectors = [each.strip() for each in environ.get(name, "").split(",") if each.strip()]
    known = _entry_points("opentelemetry_resource_detector") if detectors else set()
    if any(detector not in known | {"*"} for detector in detectors):
        raise bad(name, f"a list of resource detectors installed ({', '.join(sorted(known))})")
    if "grpc" in protocols:
        _check_grpc(environ, bad)
    for signal in ("", "TRACES_", "METRICS_"):
        name = f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal}CREDENTIAL_PROVIDER"
        if otlp_http and environ.get(name):  # the exporter was given ometer's session instead
            raise ConfigError(
                f"{name}: {environ[name]!r} is a credential provider ometer's http exporter "
                "does not use (it reads a collector's answer with a session of its own): give "
                "the credentials in OTEL_EXPORTER_OTLP_HEADERS, or export by grpc, and unset it"
            )
    for signal in ("", "TRACES_", "METRICS_"):
        name = f"OTEL_EXPORTER_OTLP_{signal}COMPRESSION"
        if name in environ:
            value = environ[name].strip().lower()
            for protocol in protocols:
                # http reads an empty variable as none set; grpc refuses it
                unset = protocol == "http" and environ[name] == ""
                if not unset and value not in _COMPRESSIONS[protocol]:
                    takes = " or ".join(_COMPRESSIONS[protocol])
                    raise bad(name, f"a compression the {protocol} exporter takes ({takes})")
        for part in _TLS_FILES:
            name = f"OTEL_EXPORTER_OTLP_{signal}{part}"
            path = environ.get(name)
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ConfigError(
                    f"{name}: {environ[name]!r} is not a file that can be read; give the PEM "
                    "file's path or unset it"
                )


def _pair(item: str) -> tuple[str, str, str]:
    """``item`` of ``OTEL_RESOURCE_ATTRIBUTES`` split at its first ``=``: the key is empty if
    there is none (the SDK logged the pair and left it out)."""
    key, equals, value = item.partition("=")
    return (key, equals, value) if equals else ("", "", item)


def _entry_points(group: str) -> set[str]:
    """The plugins installed in ``group``, by the names the SDK loads them by."""
    from importlib.metadata import entry_points

    return set(entry_points(group=group).names)


def _check_grpc(environ: Mapping[str, str], bad: Callable[[str, str], ConfigError]) -> None:
    """The variables only the grpc exporters read: a code that is none, or a credential
    provider not installed, was a KeyError or RuntimeError ometer called a bug of its own."""
    name = "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES"
    codes = [code.strip().upper() for code in environ.get(name, "").split(",") if code.strip()]
    if any(code not in _GRPC_CODES for code in codes):
        raise bad(name, f"a list of gRPC status codes ({', '.join(_GRPC_CODES).lower()})")
    for signal in ("", "TRACES_", "METRICS_"):
        name = f"OTEL_PYTHON_EXPORTER_OTLP_GRPC_{signal}CREDENTIAL_PROVIDER"
        if environ.get(name):
            known = _entry_points("opentelemetry_otlp_credential_provider")
            if environ[name] not in known:
                installed = ", ".join(sorted(known)) or "none is"
                raise bad(name, f"a credential provider installed ({installed})")


def _integer(text: str, *, low: int, high: int | None = None) -> int | None:
    """``text`` as the SDK reads a whole number (``int()``), if it is one from ``low`` (to
    ``high``)."""
    try:
        number = int(text)
    except ValueError:
        return None
    return number if low <= number <= (number if high is None else high) else None


def check_alert_email(settings: Any) -> None:
    """Refuse email alerts half set up: recipients with no SMTP server (or the reverse) sent
    no email and said nothing, and a threshold crossed went unseen."""
    if bool(settings.smtp_host) != bool(settings.email_recipients):
        given, missing = "OMETER_ALERT_EMAIL_TO", "OMETER_SMTP_HOST"
        if settings.smtp_host:
            given, missing = missing, given
        raise ConfigError(
            f"{given}: set, but {missing} is not, so budget alerts would go out by no email: "
            f"set {missing} too, or unset {given}"
        )


def doubts(loaded: Any, in_file: list[str], known: frozenset[str], *, db_flag: str | None) -> None:
    """Log, once a process, what the settings may not mean as meant: ``OMETER_`` names that
    are no setting (not in ``known``), and a SQLite ledger relative to the working folder
    (``db_flag``: the flag it came from, else ``OMETER_DB_URL``)."""
    from ollama_meter._urls import warn_relative

    warn_unknown(os.environ, in_file, known)
    if loaded._relative_db_url and loaded.db_url:
        warn_relative(db_flag or "OMETER_DB_URL", loaded._relative_db_url, loaded.db_url)
