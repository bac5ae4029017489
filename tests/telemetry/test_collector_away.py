"""A collector that is away, hung, failing or lying costs the meter nothing: calls, spans, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests._otlp import SilentCollector

# Enough spans to fill the exporter's queue several batches deep.
_EXIT_SCRIPT = """
from ollama_meter.config import load_settings
from ollama_meter.telemetry import telemetry_for

telemetry = telemetry_for(load_settings())
tracer = telemetry.observer.tracer
for n in range(2600):
    tracer.start_span(f"call {n}").end()
print("exiting", flush=True)
"""


def test_exit_waits_at_most_the_export_timeout_for_a_collector_that_never_answers() -> None:
    """The SDK's own exit hooks flushed again after ours, one export timeout per batch queued."""
    timeout = 2.0
    with SilentCollector() as collector:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OMETER_EXPORT_TIMEOUT": str(timeout),
        }
        child = subprocess.Popen(
            [sys.executable, "-c", _EXIT_SCRIPT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "exiting\n"
        started = time.monotonic()
        _, err = child.communicate(timeout=120)
        took = time.monotonic() - started
        assert collector.connections >= 1  # it did try
    assert child.returncode == 0
    assert err.count("warning: could not export telemetry") == 1 and "Traceback" not in err
    # Before: 2 s, then ~2 s per queued batch of 512 (12 s and more). The slack is for a busy machine.
    assert took < timeout + 4, f"exit took {took:.1f} s with OMETER_EXPORT_TIMEOUT={timeout}"
