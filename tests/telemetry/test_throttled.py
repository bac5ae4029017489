"""A collector that throttles: its wait honoured across exports, and the spans kept.

OTLP asks a client to wait as long as a throttling collector says: ``Retry-After`` on an HTTP
429 or 503, a ``RetryInfo`` over gRPC. A wait within the export's timeout was waited, but a
longer one failed the export at once: its spans were dropped, and the next batch was sent a
moment later, long before the collector asked. Now the export waits it out (the spans behind it
waiting in the bounded queue, as for a slow collector) and sends the same spans then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import grpc
import pytest

from ollama_meter import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry._session import retry_after
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.telemetry._timeouts import MAX_WAIT
from tests._otlp import (
    GrpcRequest,
    HttpRequest,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    spans,
    wait_for,
)
from tests.factories import make_span

WAIT = 3.0
"""What the collector asks: three times what an export may take here."""


def _end_spans(telemetry: Telemetry, count: int) -> None:
    for _ in range(count):
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)


@dataclass
class _Taken:
    requests: list[Any]


def _ok(request: HttpRequest | GrpcRequest) -> bool:
    if isinstance(request, HttpRequest):
        return request.status == 200
    return request.code is grpc.StatusCode.OK


def _throttling(
    monkeypatch: pytest.MonkeyPatch, refusal: int | grpc.StatusCode, wait: float
) -> OtlpHttpReceiver | OtlpGrpcReceiver:
    """A collector that refuses each export with ``refusal`` (an HTTP status, a gRPC code),
    asking to wait ``wait`` s; exports of spans alone go to it, each taking a second at most."""
    protocol = "http/protobuf" if isinstance(refusal, int) else "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")  # an export may take a second
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    if isinstance(refusal, int):
        rx: OtlpHttpReceiver | OtlpGrpcReceiver = OtlpHttpReceiver(status=refusal)
        rx.retry_after = f"{wait:.0f}"
    else:
        rx = OtlpGrpcReceiver(code=refusal)
        rx.retry_after = wait
    return rx


def _endpoint(rx: OtlpHttpReceiver | OtlpGrpcReceiver) -> str:
    return rx.url if isinstance(rx, OtlpHttpReceiver) else rx.endpoint


@pytest.mark.parametrize(
    ("protocol", "refusal"),
    [("http/protobuf", 429), ("http/protobuf", 503), ("grpc", grpc.StatusCode.UNAVAILABLE),
     ("grpc", grpc.StatusCode.RESOURCE_EXHAUSTED)],
)  # fmt: skip
def test_a_wait_longer_than_an_export_is_waited_and_its_spans_sent_then(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    refusal: int | grpc.StatusCode,
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_meter.telemetry")
    with _throttling(monkeypatch, refusal, WAIT) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", _endpoint(rx))
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        _end_spans(telemetry, 2)
        (throttled,) = wait_for(lambda: rx.requests, what="the throttled export")
        # It would take them now: sooner than it asked.
        if isinstance(rx, OtlpHttpReceiver):
            rx.status = 200
        else:
            rx.code = grpc.StatusCode.OK
        _end_spans(telemetry, 1)  # a later batch waits too
        taken = wait_for(
            lambda: t if len(spans(_Taken(t := [r for r in rx.requests if _ok(r)]))) == 3 else None,
            timeout=60,
            what="the three spans taken",
        )
        telemetry.shutdown()
    assert exporter.dropped == 0
    assert not _ok(throttled) and taken[0].at - throttled.at >= WAIT
    assert rx.requests[1] is taken[0]  # nothing in between
    said = [r.getMessage() for r in caplog.records if "asked" in r.getMessage()]
    assert len(said) == 1 and f"{WAIT:.0f} s" in said[0]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", None), ("soon", None), ("inf", None),
     ("nan", None), ("", None), (None, None), ("99999999", 3600.0)],
)  # fmt: skip
def test_retry_after_is_read_as_rfc_9110_has_it_within_an_hour(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header) == seconds


def test_retry_after_as_a_date_is_the_time_until_it() -> None:
    now = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after(later, now=now) == 90.0
    assert retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    ("protocol", "asked"),
    [("http/protobuf", 86400.0), ("http/protobuf", 1e11), ("grpc", 86400.0), ("grpc", 1e11)],
)
def test_a_wait_asked_past_an_hour_is_an_hour_over_either_protocol(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    asked: float,
) -> None:
    """A collector that asks for a day (or, over gRPC, a RetryInfo of 3,000 years: its Duration
    is int64 seconds) holds exports an hour at most, as a ``Retry-After`` does. Over gRPC the
    wait was taken as said: a day held every span for a day, and a wait past what a thread can
    wait (``threading.TIMEOUT_MAX``) raised in the exporter's thread at every export after it,
    each batch lost with no drop counted and no line, not even at exit."""
    caplog.set_level(logging.WARNING, logger="ollama_meter.telemetry")
    refusal = grpc.StatusCode.UNAVAILABLE if protocol == "grpc" else 429
    with _throttling(monkeypatch, refusal, asked) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", _endpoint(rx))
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        before = time.monotonic()
        _end_spans(telemetry, 2)
        wait_for(lambda: exporter.not_before, timeout=60, what="the collector's wait taken")
        after, held = time.monotonic(), exporter.not_before
        _end_spans(telemetry, 1)  # waits behind it, and is counted when the process stops
        telemetry.shutdown()
    assert before + MAX_WAIT <= held <= after + MAX_WAIT == after + 3600  # an hour from its answer
    said = [r.getMessage() for r in caplog.records if "asked" in r.getMessage()]
    assert len(said) == 1 and "wait 3600 s" in said[0]
    assert len(rx.requests) == 1 and exporter.dropped == 3
    assert telemetry.failures() == [exporter.name]
