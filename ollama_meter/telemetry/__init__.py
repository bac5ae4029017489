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


_said: list[str] = []
_HOW = {
    "LANGFUSE_PUBLIC_KEY": "the project's public key, pk-lf-...",
    "LANGFUSE_SECRET_KEY": "its secret key, sk-lf-..., of the same project",
    "LANGFUSE_BASE_URL (or LANGFUSE_HOST)": "where Langfuse is, such as https://cloud.langfuse.com",
}
"""What Langfuse's settings are, as a line naming the missing ones says what to set."""


def _say_no_langfuse(settings: Settings) -> None:
    """Say, once a process, that Langfuse is half configured: a key without the other, the
    keys with no URL (its SDK would send to its cloud; an on-prem meter sends prompts nowhere
    it is not told) or a URL with no key. Nothing then goes to Langfuse, and before, only the
    keys with no URL said so."""
    url = "LANGFUSE_BASE_URL" if settings.langfuse_base_url else "LANGFUSE_HOST"
    given = {
        "LANGFUSE_PUBLIC_KEY": bool(settings.langfuse_public_key),
        "LANGFUSE_SECRET_KEY": bool(settings.langfuse_secret_key),
        url: bool(settings.langfuse_host),
    }
    if all(given.values()) or not any(given.values()):
        return
    named = [name for name, set_ in given.items() if set_]
    missing = [name for name, set_ in zip(_HOW, given.values(), strict=True) if not set_]
    line = (
        f"{' and '.join(named)} {'is' if len(named) == 1 else 'are'} set, but not "
        f"{' or '.join(missing)}: nothing is exported to Langfuse; set "
        + " and ".join(f"{name} ({_HOW[name]})" for name in missing)
    )
    if line in _said:
        return
    _said.append(line)
    logging.getLogger("ollama_meter.telemetry").warning("%s", line)


__all__ = ["telemetry_for"]
