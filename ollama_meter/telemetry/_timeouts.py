"""How long an export may take: the OTLP variables the spec names, else ometer's own.

``OTEL_EXPORTER_OTLP_TIMEOUT`` and the per-signal ``_TRACES_TIMEOUT`` and ``_METRICS_TIMEOUT``
are milliseconds, as the spec has them (the settings read them as seconds); the Python SDK
reads them as seconds itself, so ometer gives its exporters the timeout, never the SDK.
``settings`` are :class:`~ollama_meter.config.Settings` (not imported: mypy then lost a type
of the client's, reading the modules in another order).
"""

from __future__ import annotations

from typing import Any


def export_timeout(settings: Any, signal: str | None) -> tuple[float, str]:
    """Seconds an export of ``signal`` (traces, metrics; None: to Langfuse or Traceloop) may
    take, and the variable that says so. An OTLP export: the signal's own
    ``OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT``, else ``OTEL_EXPORTER_OTLP_TIMEOUT`` (the spec's
    order), else ``OMETER_EXPORT_TIMEOUT``, which bounds every other export."""
    if signal and (seconds := settings.otlp_of("timeout", signal)) is not None:
        own = getattr(settings, f"otlp_{signal}_timeout") is not None
        return seconds, f"OTEL_EXPORTER_OTLP_{signal.upper() + '_' if own else ''}TIMEOUT"
    return settings.export_timeout, "OMETER_EXPORT_TIMEOUT"


def export_bound(settings: Any) -> tuple[float, str]:
    """How long an exit waits for the exports ``settings`` ask for, and the variable that says
    so: the longest of ``OMETER_EXPORT_TIMEOUT`` and the timeouts of the OTLP signals sent."""
    signals = [s for s in ("traces", "metrics") if settings.otlp_of("endpoint", s)]
    return max(export_timeout(settings, signal) for signal in [*signals, None])
