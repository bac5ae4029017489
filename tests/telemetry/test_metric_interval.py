"""``OTEL_METRIC_EXPORT_INTERVAL`` sets how often metrics go, as the SDK spec says.

ometer gave the metric reader 60 s itself, so the variable went unread: a collector asked
for points every 10 s (a dashboard's resolution, an alert's window) got one a minute. A value
the SDK cannot take is an error line: it took a word for 60 s with a raw log line, and past
``threading.TIMEOUT_MAX`` its export thread died of an OverflowError (no metric until exit).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_meter import MeteredClient, load_settings
from ollama_meter.errors import ConfigError
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator, unreachable_url
from tests._otlp import OtlpHttpReceiver, metric_points, wait_for

HI = [{"role": "user", "content": "hello"}]


def test_metrics_go_as_often_as_the_interval_says(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OLLAMA_HOST", emulator.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None
        try:  # no flush: the reader's own clock sends them (60 s before)
            wait_for(
                lambda: metric_points(rx).get("gen_ai.client.operation.duration"),
                timeout=30,
                what="a metrics export within the interval",
            )
        finally:
            telemetry.shutdown()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5", "inf", "nan", "86400001", "1e30"])
def test_an_interval_the_sdk_cannot_take_is_an_error_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == (
        f"OTEL_METRIC_EXPORT_INTERVAL: {value!r} is not a whole number of milliseconds from 1 "
        "to 86,400,000 (a day); fix or unset it"
    )


def test_the_interval_is_not_read_when_no_metrics_are_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    assert load_settings().telemetry_configured
