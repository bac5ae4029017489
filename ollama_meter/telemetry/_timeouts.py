"""How long an export may take: the OTLP variables the spec names, else ometer's own.

``OTEL_EXPORTER_OTLP_TIMEOUT`` and the per-signal ``_TRACES_TIMEOUT`` and ``_METRICS_TIMEOUT``
are milliseconds, as the spec has them (the settings read them as seconds); the Python SDK
reads them as seconds itself, so ometer gives its exporters the timeout, never the SDK.
``settings`` are :class:`~ollama_meter.config.Settings` (not imported: mypy then lost a type
of the client's, reading the modules in another order).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ollama_meter.telemetry")

MEANT_AS_SECONDS = 0.1
"""An OTLP timeout under this (100 ms) was almost surely written in seconds, as the Python SDK
reads it: ``OTEL_EXPORTER_OTLP_TIMEOUT=10`` is 10 ms here, and every export fails."""
MAX_WAIT = 3600.0
"""Seconds a collector's ``Retry-After`` (over gRPC, its RetryInfo) holds exports at most: one
that says a day is waited an hour (the spans meanwhile bounded by the queue), not taken as a
wish to stop for good."""
_said: set[tuple[str, float]] = set()


def export_timeout(settings: Any, signal: str | None) -> tuple[float, str]:
    """Seconds an export of ``signal`` (traces, metrics; None: to Langfuse or Traceloop) may
    take, and the variable that says so. An OTLP export: the signal's own
    ``OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT``, else ``OTEL_EXPORTER_OTLP_TIMEOUT`` (the spec's
    order), else ``OMETER_EXPORT_TIMEOUT``, which bounds every other export."""
    if signal and (seconds := settings.otlp_of("timeout", signal)) is not None:
        own = getattr(settings, f"otlp_{signal}_timeout") is not None
        return seconds, f"OTEL_EXPORTER_OTLP_{signal.upper() + '_' if own else ''}TIMEOUT"
    return settings.export_timeout, "OMETER_EXPORT_TIMEOUT"


def warn_if_meant_as_seconds(seconds: float, name: str) -> None:
    """Say once a process that an OTLP timeout ``name`` of under 100 ms is milliseconds:
    written as seconds, it failed every export with no word of why."""
    if seconds >= MEANT_AS_SECONDS or not name.startswith("OTEL_") or (name, seconds) in _said:
        return
    _said.add((name, seconds))
    ms = round(seconds * 1000)
    log.warning(
        "%s=%d is %d milliseconds (the OpenTelemetry spec's unit; the Python SDK reads "
        "seconds): an export that takes longer fails. For %d seconds, write %d",
        name, ms, ms, ms, ms * 1000,
    )  # fmt: skip


def export_bound(settings: Any) -> tuple[float, str]:
    """How long an exit waits for the exports ``settings`` ask for, and the variable that says
    so: the longest of ``OMETER_EXPORT_TIMEOUT`` and the timeouts of the OTLP signals sent."""
    signals = [s for s in ("traces", "metrics") if settings.otlp_of("endpoint", s)]
    return max(export_timeout(settings, signal) for signal in [*signals, None])
