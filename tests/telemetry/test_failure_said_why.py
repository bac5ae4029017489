"""A place that refuses exports is said with what it answered: a wrong key is not a dead host.

The most common Langfuse mistake, a key of another project or region (401), and a wrong path
(404) were said as "could not export spans to ...; they are dropped until it answers", the
words of a collector that is away: the reader looked for a network fault. The status the place
answered (over gRPC, its code) is now in the line; a place that gave no answer has none.
"""

from __future__ import annotations

import grpc
import pytest

from ollama_meter import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.testing import unreachable_url
from tests._otlp import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.factories import make_span


def _said_after_one_span(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, timeout: str = "0.5"
) -> str:
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", timeout)
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    telemetry = Telemetry(load_settings())
    span = make_storable(make_span())
    telemetry.observer.on_start(span)
    telemetry.observer.on_end(span)
    telemetry.flush()
    telemetry.shutdown()
    (said,) = [r.getMessage() for r in caplog.records if "could not export" in r.getMessage()]
    return said


def _line(place: str, why: str) -> str:
    return (
        f"could not export spans to {place}{why}; they are dropped until it answers "
        "(the ledger keeps every call)"
    )


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_an_http_refusal_is_said_with_its_status(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    with OtlpHttpReceiver(status=status) as rx:
        url = f"{rx.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        said = _said_after_one_span(monkeypatch, caplog)
    assert said == _line(url, f" (it answered HTTP {status})")


def test_a_grpc_refusal_is_said_with_its_code(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with OtlpGrpcReceiver(code=grpc.StatusCode.UNAUTHENTICATED) as rx:
        endpoint = rx.endpoint
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        said = _said_after_one_span(monkeypatch, caplog)
    assert said == _line(endpoint, " (it answered UNAUTHENTICATED)")


def test_a_place_that_gave_no_answer_is_said_without_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{unreachable_url()}/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
    said = _said_after_one_span(monkeypatch, caplog)
    assert said == _line(url, "")
