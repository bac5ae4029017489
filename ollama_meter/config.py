"""Settings: read once from flags, then the environment, then a ``.env`` file.

Owns names, defaults and validation of every setting. Nothing here opens a database or a
socket; a bad value becomes one :class:`ConfigError` line naming the setting to fix.

Annotations are objects here, not strings (no ``from __future__ import annotations``):
pydantic evaluated each field's string again whenever a command started.
"""

import os
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from ollama_meter import _names
from ollama_meter._environment import (
    GATEWAY_ENV,
    Exporter,
    check_alert_email,
    check_env_file,
    check_sdk_environment,
    doubts,
    otlp_headers,
    otlp_protocol,
    sdk_disabled,
    service_name,
    traces_sampler,
)
from ollama_meter._names import name_problem, system_timezone, zone_problem
from ollama_meter._paths import default_data_dir, existing_file
from ollama_meter._said import Float, Int, Millis, Seconds
from ollama_meter._sources import QuickSettings
from ollama_meter._urls import (
    UpstreamSpec,
    absolute_sqlite,
    credential_problem,
    database_url,
    email_addresses,
    host_name,
    http_url,
    normalize_host,
    parse_upstreams,
)
from ollama_meter.errors import ConfigError
from ollama_meter.records._limit import MAX_QUEUE, MAX_SLOTS

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
TRACELOOP_URL = "https://api.traceloop.com"


DAY_SECONDS = 86_400
"""The longest a duration setting may be: every one of them is used as a timer."""


class Settings(QuickSettings):
    """All of ometer's settings. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,  # an infinite timeout or backoff would overflow where it is used
    )

    ollama_host: Annotated[str, Field(validation_alias="OLLAMA_HOST")] = DEFAULT_OLLAMA_HOST
    db_url: Annotated[str | None, Field(validation_alias="OMETER_DB_URL")] = None
    _relative_db_url: str | None = PrivateAttr(None)
    """``db_url`` as given, when it named a SQLite file relative to the working folder."""
    tenant: Annotated[str, Field(validation_alias="OMETER_TENANT")] = _names.NO_TENANT
    department: Annotated[str, Field(validation_alias="OMETER_DEPARTMENT")] = _names.NO_DEPARTMENT
    currency: Annotated[str, Field(validation_alias="OMETER_CURRENCY")] = "USD"
    timezone: Annotated[str, Field(validation_alias="OMETER_TIMEZONE")] = Field(
        default_factory=system_timezone
    )
    pricing_file: Annotated[Path | None, Field(validation_alias="OMETER_PRICING_FILE")] = None
    upstream_timeout: Annotated[
        Seconds, Field(validation_alias="OMETER_UPSTREAM_TIMEOUT", le=DAY_SECONDS)
    ] = 300.0
    retries: Annotated[Int, Field(validation_alias="OMETER_RETRIES", ge=0, le=10)] = 2
    retry_backoff: Annotated[
        Float, Field(validation_alias="OMETER_RETRY_BACKOFF", ge=0, le=3600)
    ] = 0.5
    breaker_failures: Annotated[
        Int, Field(validation_alias="OMETER_BREAKER_FAILURES", ge=1, le=1000)
    ] = 3
    breaker_reset: Annotated[
        Seconds, Field(validation_alias="OMETER_BREAKER_RESET", le=DAY_SECONDS)
    ] = 60.0
    capture_content: Annotated[bool, Field(validation_alias="OMETER_CAPTURE_CONTENT")] = False
    log_format: Annotated[
        str, Field(validation_alias="OMETER_LOG_FORMAT", pattern="^(text|json)$")
    ] = "text"
    log_level: Annotated[
        str,
        Field(
            validation_alias="OMETER_LOG_LEVEL", pattern="(?i)^(debug|info|warning|error|critical)$"
        ),
    ] = "WARNING"
    otlp_endpoint: Annotated[str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")] = (
        None
    )
    otlp_traces_endpoint: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ] = None
    otlp_metrics_endpoint: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    ] = None
    otlp_protocol: Annotated[str, Field(validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL")] = (
        "http/protobuf"
    )
    otlp_traces_protocol: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    ] = None
    otlp_metrics_protocol: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
    ] = None
    otlp_headers: Annotated[str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_HEADERS")] = None
    otlp_traces_headers: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    ] = None
    otlp_metrics_headers: Annotated[
        str | None, Field(validation_alias="OTEL_EXPORTER_OTLP_METRICS_HEADERS")
    ] = None
    otlp_timeout: Annotated[Millis, Field(validation_alias="OTEL_EXPORTER_OTLP_TIMEOUT")] = None
    otlp_traces_timeout: Annotated[
        Millis, Field(validation_alias="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
    ] = None
    otlp_metrics_timeout: Annotated[
        Millis, Field(validation_alias="OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")
    ] = None
    otel_service_name: Annotated[str | None, Field(validation_alias="OTEL_SERVICE_NAME")] = None
    otel_sdk_disabled: Annotated[str | None, Field(validation_alias="OTEL_SDK_DISABLED")] = None
    traces_exporter: Annotated[Exporter, Field(validation_alias="OTEL_TRACES_EXPORTER")] = "otlp"
    metrics_exporter: Annotated[Exporter, Field(validation_alias="OTEL_METRICS_EXPORTER")] = "otlp"
    langfuse_public_key: Annotated[str | None, Field(validation_alias="LANGFUSE_PUBLIC_KEY")] = None
    langfuse_secret_key: Annotated[
        SecretStr | None, Field(validation_alias="LANGFUSE_SECRET_KEY")
    ] = None
    langfuse_host: Annotated[str | None, Field(validation_alias="LANGFUSE_HOST")] = None
    langfuse_base_url: Annotated[str | None, Field(validation_alias="LANGFUSE_BASE_URL")] = None
    traceloop_api_key: Annotated[SecretStr | None, Field(validation_alias="TRACELOOP_API_KEY")] = (
        None
    )
    traceloop_base_url: Annotated[str, Field(validation_alias="TRACELOOP_BASE_URL")] = TRACELOOP_URL
    ledger_wait: Annotated[Seconds, Field(validation_alias="OMETER_LEDGER_WAIT", le=600)] = 5.0
    """Seconds the ledger waits for a busy database, and for each answer of a PostgreSQL
    server, before a write's spans go to the spool instead (or a budget check refuses)."""
    journal: Annotated[bool, Field(validation_alias="OMETER_JOURNAL")] = True
    """Write each call to the crash journal before it goes upstream (off only to measure it)."""
    budget_reply_cap: Annotated[
        Int, Field(validation_alias="OMETER_BUDGET_REPLY_CAP", ge=1, le=10_000_000)
    ] = 4096
    """Reply tokens a call under a hard budget may produce when it sets no num_predict/max_tokens."""
    export_timeout: Annotated[Seconds, Field(validation_alias="OMETER_EXPORT_TIMEOUT", le=3600)] = (
        3.0
    )
    department_budgets: Annotated[str | None, Field(validation_alias="DEPARTMENT_BUDGETS")] = None
    alert_webhook_url: Annotated[str | None, Field(validation_alias="OMETER_ALERT_WEBHOOK_URL")] = (
        None
    )
    smtp_host: Annotated[str | None, Field(validation_alias="OMETER_SMTP_HOST")] = None
    smtp_port: Annotated[Int, Field(validation_alias="OMETER_SMTP_PORT", gt=0, lt=65536)] = 25
    smtp_user: Annotated[str | None, Field(validation_alias="OMETER_SMTP_USER")] = None
    smtp_password: Annotated[SecretStr | None, Field(validation_alias="OMETER_SMTP_PASSWORD")] = (
        None
    )
    smtp_from: Annotated[str, Field(validation_alias="OMETER_SMTP_FROM")] = "ometer@localhost"
    alert_email_to: Annotated[str | None, Field(validation_alias="OMETER_ALERT_EMAIL_TO")] = None
    fixed_monthly_cost: Annotated[
        Decimal | None, Field(validation_alias="OMETER_FIXED_MONTHLY_COST", ge=0)
    ] = None
    keep_days: Annotated[Int | None, Field(validation_alias="OMETER_KEEP_DAYS", ge=1)] = None
    upstreams: Annotated[str | None, Field(validation_alias="OMETER_UPSTREAMS")] = None
    """Several Ollama servers for the gateway: ``url[#slots=N],...`` (instead of OLLAMA_HOST)."""
    slots: Annotated[Int | None, Field(validation_alias="OMETER_SLOTS", ge=1, le=MAX_SLOTS)] = None
    """Calls each server runs at once through the gateway; more wait in its fair queue."""
    max_queue: Annotated[Int, Field(validation_alias="OMETER_MAX_QUEUE", ge=0, le=MAX_QUEUE)] = 512
    """Calls that may wait for a slot; more are answered 503 "server busy", as Ollama does."""
    discovery_interval: Annotated[
        Seconds, Field(validation_alias="OMETER_DISCOVERY_INTERVAL", ge=0.1, le=3600)
    ] = 10.0
    """Seconds between two reads of every server's models (with several upstreams)."""
    drain_timeout: Annotated[Seconds, Field(validation_alias="OMETER_DRAIN_TIMEOUT", le=600)] = 10.0
    """Seconds a stopping gateway (``serve``, ``run``) lets the calls in flight finish."""

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_upstreams(value)  # raises ValueError saying what is wrong
        return value.strip()

    @property
    def upstream_specs(self) -> tuple[UpstreamSpec, ...]:
        """The servers the gateway relays to: ``OMETER_UPSTREAMS``, else ``OLLAMA_HOST``."""
        if self.upstreams:
            return parse_upstreams(self.upstreams, slots=self.slots)
        return (UpstreamSpec(self.ollama_host, self.slots),)

    @field_validator("ollama_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_host(value) if value.strip().strip("\"'") else DEFAULT_OLLAMA_HOST

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str | None) -> str | None:
        return database_url(value.strip()) if value is not None and value.strip() else None

    @model_validator(mode="after")
    def _resolved(self) -> "Settings":
        """A SQLite file named relative to the working folder is that folder's, read once: a
        process that changes folder later keeps its ledger (``load_settings`` says which)."""
        if self.db_url and (absolute := absolute_sqlite(self.db_url)):
            self._relative_db_url, self.__dict__["db_url"] = self.db_url, absolute
        # Langfuse's SDK reads LANGFUSE_BASE_URL (the name Langfuse gives a key with) first.
        self.__dict__["langfuse_host"] = self.langfuse_base_url or self.langfuse_host
        return self

    @field_validator("department_budgets")
    @classmethod
    def _department_budgets(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from ollama_meter.records import parse_department_budgets

        parse_department_budgets(value, currency="USD")  # raises ValueError saying what is wrong
        return value

    @field_validator(
        "otlp_endpoint",
        "otlp_traces_endpoint",
        "otlp_metrics_endpoint",
        "langfuse_host",
        "langfuse_base_url",
        "traceloop_base_url",
        "alert_webhook_url",
    )
    @classmethod
    def _collector(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A collector's or the webhook's URL, checked here: a typo would otherwise fail every
        export or alert unseen. A webhook's path is its secret: errors leave it out."""
        if value is None or not value.strip():
            return TRACELOOP_URL if info.field_name == "traceloop_base_url" else None
        if info.field_name == "alert_webhook_url":
            return http_url(value, "https://hooks.example.com/services/...", secret_path=True)
        return http_url(value, "http://collector:4318")

    @field_validator("otlp_headers", "otlp_traces_headers", "otlp_metrics_headers")
    @classmethod
    def _otlp_headers(cls, value: str | None) -> str | None:
        return otlp_headers(value)

    @field_validator("otel_service_name")
    @classmethod
    def _service_name(cls, value: str | None) -> str | None:
        return service_name(value)

    @field_validator("otlp_protocol", "otlp_traces_protocol", "otlp_metrics_protocol")
    @classmethod
    def _otlp_protocol(cls, value: str | None, info: ValidationInfo) -> str | None:
        return otlp_protocol(value, general=info.field_name == "otlp_protocol")

    @field_validator(
        "traceloop_api_key",
        "langfuse_public_key",
        "langfuse_secret_key",
        "smtp_user",
        "smtp_password",
        mode="before",
    )
    @classmethod
    def _credential(cls, value: object, info: ValidationInfo) -> object:
        """A key or login as it goes out, checked here: one with a line break (a secret file's)
        or a character an HTTP header or smtplib's login cannot carry failed every export or
        alert email, unsent, and nothing said why. The error never shows the value."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value  # pydantic says what is wrong with it
        if info.field_name != "smtp_password":
            text = text.strip()  # no header (nor user name) carries a value's surrounding blanks
        if not text:
            return None
        if problem := credential_problem(text, public=info.field_name == "langfuse_public_key"):
            raise ValueError(problem)
        return text

    @field_validator("smtp_host", "smtp_from", "alert_email_to")
    @classmethod
    def _email(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Where alert email goes, checked here: a typo would otherwise fail every alert unseen."""
        if info.field_name == "smtp_from":
            return email_addresses(value or "", one=True)[0]
        if value is None or not value.strip():
            return None
        if info.field_name == "smtp_host":
            return host_name(value.strip(), port_setting="OMETER_SMTP_PORT")
        return ", ".join(email_addresses(value, one=False))

    @field_validator("fixed_monthly_cost", mode="before")
    @classmethod
    def _fixed_cost(cls, value: object, info: ValidationInfo) -> object:
        from ollama_meter.records import MAX_AMOUNT, minor_places, parse_amount

        if value is None or value == "":
            return None
        given = value if isinstance(value, str | int | Decimal) else str(value)
        # In the currency's smallest amount (2 places for USD, 0 for JPY, 3 for KWD): the bill
        # splits it in those, and cannot split 333.34 yen. A bad currency is its own error.
        currency = info.data.get("currency", "USD")
        places = minor_places(currency)
        return parse_amount(given, what="the value", limit=MAX_AMOUNT, places=places)

    @property
    def telemetry_configured(self) -> bool:
        """Whether any exporter is asked for (and the SDK not disabled); without one, no
        telemetry code runs at all."""
        return not sdk_disabled(self.otel_sdk_disabled) and bool(
            self.otlp_of("endpoint", "traces")
            or self.otlp_of("endpoint", "metrics")
            or (self.langfuse_public_key and self.langfuse_secret_key and self.langfuse_host)
            or self.traceloop_api_key
        )

    def traces_sampler(self) -> tuple[str, float]:
        """``OTEL_TRACES_SAMPLER`` and its probability, read from the environment as the SDK
        reads them (checked when the settings were loaded)."""
        return traces_sampler(os.environ)

    def otlp_of(self, setting: str, signal: str) -> Any:
        """``signal``'s (traces, metrics) OTLP ``setting`` (endpoint, protocol, headers, timeout
        in s): its own, else the general one, never both merged (the spec's rule); no endpoint
        for a signal whose exporter (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``) is none."""
        if setting == "endpoint" and getattr(self, f"{signal}_exporter") == "none":
            return None
        return getattr(self, f"otlp_{signal}_{setting}") or getattr(self, f"otlp_{setting}")

    @property
    def email_recipients(self) -> list[str]:
        return [a.strip() for a in (self.alert_email_to or "").split(",") if a.strip()]

    @field_validator("tenant", "department")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        from ollama_meter.records import known_currency

        return known_currency(value, what="")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if problem := zone_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("pricing_file", mode="before")
    @classmethod
    def _blank_pricing_file(cls, value: object) -> object:
        # Blank is unset, as for every setting: as a Path, "" is "." (the current folder).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("pricing_file")
    @classmethod
    def _pricing_file(cls, value: Path | None) -> Path | None:
        return None if value is None else existing_file(value)

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def ledger_url(self) -> str:
        """The database URL in use: ``OMETER_DB_URL`` or the default SQLite file."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{default_data_dir() / 'ledger.db'}"


def _env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    return alias if isinstance(alias, str) else field


def known_env_names() -> frozenset[str]:
    """Every environment variable ometer reads."""
    return frozenset(_env_name(field) for field in Settings.model_fields) | GATEWAY_ENV


def load_settings(
    *, flags: Mapping[str, str] | None = None, warn: bool = True, **overrides: Any
) -> Settings:
    """Build settings from overrides (flags) over the environment and ``.env``.

    Overrides that are ``None`` are ignored so CLI options can be passed through
    as they are. A bad value raises :class:`ConfigError` naming where it came from:
    the command-line flag (``flags`` maps a field to it) when an override was
    given, else the environment variable. ``OMETER_`` names that are no setting are
    logged once a process (``warn``; off only to read the logging settings themselves).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    in_file = check_env_file(Path(".env"))
    try:
        loaded = Settings(**given)
    except ValidationError as exc:
        from ollama_meter._said import said

        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        info = next(
            (f for n, f in Settings.model_fields.items() if field in (n, f.validation_alias)), None
        )
        message = said(error, info)
        where = (flags or {}).get(field) if field in given else None
        raise ConfigError(f"{where or _env_name(field)}: {message}") from None
    check_alert_email(loaded)
    if loaded.telemetry_configured:
        check_sdk_environment(os.environ, loaded)
    if warn:
        flag = (flags or {}).get("db_url") if "db_url" in given else None
        doubts(loaded, in_file, known_env_names(), db_flag=flag)
    return loaded
