"""A gRPC export refused UNAVAILABLE is on a new channel next, as the SDK had it, even when
no try of it follows within the export timeout. A real gRPC collector (OtlpGrpcReceiver)."""

from __future__ import annotations

import grpc
import pytest

from ollama_meter.config import load_settings
from ollama_meter.telemetry._setup import Telemetry
from tests._otlp import OtlpGrpcReceiver
from tests.test_own_random import _calls, _env


@pytest.mark.parametrize(("timeout", "retry_after"), [("1", None), ("3", 3600.0)])
def test_an_export_refused_unavailable_with_no_time_to_try_again_leaves_a_new_channel(
    timeout: str, retry_after: float | None
) -> None:
    """The channel was made anew only before a second try: with a timeout shorter than the
    first wait (1 to 1.5 s), or a collector saying come back in an hour, never, and every
    export went on a channel gRPC itself holds in its reconnect backoff (up to 2 minutes).
    A collector that said an hour gets nothing before it (OTLP: its RetryInfo is honoured)."""
    with (
        OtlpGrpcReceiver(code=grpc.StatusCode.UNAVAILABLE) as rx,
        _env(rx.endpoint, timeout=timeout),
    ):
        rx.retry_after = retry_after
        telemetry = Telemetry(load_settings())
        try:
            (exporter,) = telemetry.span_exporters
            before = exporter.inner._channel
            _calls(telemetry, 1)
            telemetry.flush()
            anew = exporter.inner._channel is not before
            rx.code = grpc.StatusCode.OK
            _calls(telemetry, 1)
            telemetry.flush()
        finally:
            telemetry.shutdown()
    codes = [grpc.StatusCode.UNAVAILABLE] + ([grpc.StatusCode.OK] if retry_after is None else [])
    assert [r.code for r in rx.requests] == codes
    assert anew


def test_an_export_refused_unavailable_as_the_exporter_shuts_down_makes_no_channel_anew() -> None:
    """The exporter's shutdown begins while an export is on the wire (the SDK's shutdown()
    sets its flag, then closes its channel), and the collector answers UNAVAILABLE: the
    channel is not made anew. Made anew, it was one no shutdown closes, left open (with
    gRPC's threads and sockets) for the life of the process."""
    with (
        OtlpGrpcReceiver(code=grpc.StatusCode.UNAVAILABLE) as rx,
        _env(rx.endpoint, timeout="3"),
    ):
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        inner = exporter.inner
        before = inner._channel

        def shutting_down() -> None:  # shutdown() begun: its flag set, its channel not closed yet
            inner._shutdown = True
            inner._shutdown_in_progress.set()

        rx.answering = shutting_down
        try:
            _calls(telemetry, 1)
            telemetry.flush()
            after = inner._channel
        finally:
            inner._channel.close()  # what shutdown() goes on to do
            telemetry.shutdown()
    assert [r.code for r in rx.requests] == [grpc.StatusCode.UNAVAILABLE]  # not tried again
    assert after is before
