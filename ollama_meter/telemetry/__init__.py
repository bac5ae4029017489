"""Telemetry: OpenTelemetry spans and metrics per call, exported over OTLP, to Langfuse, Traceloop.

An output of the meter, never an input: the meter calls the observer, nothing
here reads the ledger. Nothing in this package is imported, and no exporter is
created, unless an exporter is configured.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

from ollama_meter._runtime import runtime

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.telemetry._setup import Telemetry


def telemetry_for(settings: Settings) -> Telemetry | None:
    """The process's telemetry for this configuration, or None when nothing is configured."""
    _say_no_langfuse(settings)
    if not settings.telemetry_configured:
        return None
    from ollama_meter.telemetry._setup import Telemetry, stop_with_its_runtime

    key = settings.model_dump_json(
        include={
            "otlp_endpoint",
            "otlp_traces_endpoint",
            "otlp_metrics_endpoint",
            "otlp_protocol",
            "otlp_traces_protocol",
            "otlp_metrics_protocol",
            "otlp_headers",
            "otlp_traces_headers",
            "otlp_metrics_headers",
            "traces_exporter",
            "metrics_exporter",
            "langfuse_host",
            "langfuse_public_key",
            "traceloop_base_url",
            "capture_content",
            "otel_service_name",
            "export_timeout",
        }
    )
    # The keys too (their JSON above is masked), as a digest: a client given its own
    # Traceloop key or Langfuse secret got the exporters of the first, and sent with its key.
    secrets = [settings.langfuse_secret_key, settings.traceloop_api_key]
    said = json.dumps([None if s is None else s.get_secret_value() for s in secrets])
    key += hashlib.sha256(said.encode()).hexdigest()
    shared = runtime()
    return shared.shared(
        "telemetry", key, lambda: Telemetry(settings, owner=shared), stop_with_its_runtime
    )


_said: list[bool] = []


def _say_no_langfuse(settings: Settings) -> None:
    """Say, once a process, that Langfuse's keys are set with no URL: nothing goes to Langfuse
    (its SDK would send to its cloud; an on-prem meter sends prompts nowhere it is not told),
    and before, nothing said so."""
    keys = settings.langfuse_public_key and settings.langfuse_secret_key
    if not keys or settings.langfuse_host or _said:
        return
    _said.append(True)
    logging.getLogger("ollama_meter.telemetry").warning(
        "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are set, but not LANGFUSE_BASE_URL (or "
        "LANGFUSE_HOST): nothing is exported to Langfuse; set where it is, such as "
        "https://cloud.langfuse.com"
    )


__all__ = ["telemetry_for"]
