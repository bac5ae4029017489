"""A program that seeds Python's ``random`` gets the numbers it would get without ometer.

A retry's jitter took them from the program's own generator: an Ollama call retried, or
an alert sent again, moved a seeded simulation or sampled evaluation onto other numbers.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import WebhookChannel, deliver
from ollama_meter.config import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.testing import unused_port
from ollama_meter.upstream._resilience import RetryPolicy
from tests._otlp import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.budgets.test_alert_email_utf8 import ALERT
from tests.factories import make_span


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), retries=st.integers(1, 6))
def test_retry_waits_take_no_number_from_the_programs_random(seed: int, retries: int) -> None:
    state = random.getstate()  # hypothesis' own, put back
    try:
        random.seed(seed)
        expected = [random.random() for _ in range(3)]
        random.seed(seed)
        waits = [RetryPolicy().delay(attempt) for attempt in range(1, retries + 1)]
        refused = WebhookChannel(f"http://127.0.0.1:{unused_port()}/hook")  # nobody listens
        outcome, delivered = deliver(ALERT, [refused], attempts=retries, sleep=waits.append)
        assert not delivered and outcome["webhook"].startswith("failed")
        assert len(waits) == 2 * retries - 1  # the waits were made, each jittered
        assert [random.random() for _ in range(3)] == expected
    finally:
        random.setstate(state)


def test_forked_workers_wait_apart() -> None:
    """Workers forked from one parent (gunicorn, multiprocessing) jitter their retries apart,
    as random's own numbers do after a fork, instead of all retrying at the same instants."""
    if not hasattr(os, "fork"):
        return
    program = (
        "import os, sys\n"
        "from ollama_meter.upstream._resilience import RetryPolicy\n"
        "RetryPolicy().delay(1)\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        print(RetryPolicy().delay(1), flush=True)\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True
    )
    first, second = out.stdout.split()
    assert first != second, out


def _unmoved(seed: int, work: Callable[[], object]) -> tuple[list[float], list[float]]:
    """What ``random`` gave after ``seed`` and ``work``, and what it gives after ``seed`` alone."""
    state = random.getstate()
    try:
        random.seed(seed)
        expected = [random.random() for _ in range(3)]
        random.seed(seed)
        work()
        return [random.random() for _ in range(3)], expected
    finally:
        random.setstate(state)


def _calls(telemetry: Telemetry, count: int) -> None:
    for _ in range(count):
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), calls=st.integers(1, 5))
def test_telemetry_spans_take_no_number_from_the_programs_random(seed: int, calls: int) -> None:
    """Each OTel span's trace and span ids came from the SDK's generator, which draws from the
    program's ``random``: every metered call with OTLP export on moved a seeded program's
    numbers (3 calls: 6 draws of 64 and 128 bits)."""
    with OtlpGrpcReceiver() as rx, _env(rx.endpoint):
        telemetry = Telemetry(load_settings())
        try:
            got, expected = _unmoved(seed, lambda: _calls(telemetry, calls))
            telemetry.flush()
        finally:
            telemetry.shutdown()
    assert sum(len(r.message.resource_spans[0].scope_spans[0].spans) for r in rx.requests) == calls
    assert got == expected


def _one_export(rx: OtlpGrpcReceiver) -> tuple[bool, list[str]]:
    """One call's span exported to ``rx``, each refusal saying come back in 10 ms: whether
    the program's ``random`` gave what it would have without it, and where exports failed."""
    rx.retry_after = 0.01
    with _env(rx.endpoint):
        return _one_call_exported()


def _one_call_exported() -> tuple[bool, list[str]]:
    """One call's span exported where the environment says: whether the program's ``random``
    gave what it would have without it, and where exports failed."""
    telemetry = Telemetry(load_settings())
    try:
        _calls(telemetry, 1)
        got, expected = _unmoved(7, telemetry.flush)
    finally:
        telemetry.shutdown()
    return got == expected, telemetry.failures()


def test_a_grpc_export_tried_again_takes_no_number_from_the_programs_random() -> None:
    """The SDK's gRPC exporter drew its backoff's jitter from the program's ``random`` at each
    failed try, even one whose wait the collector said (RetryInfo): a collector throttling
    ometer moved a seeded program's numbers 6 times an export."""
    with OtlpGrpcReceiver(code=grpc.StatusCode.RESOURCE_EXHAUSTED) as rx:
        unmoved, failed = _one_export(rx)
        assert failed == [rx.endpoint]
    assert len(rx.requests) == 6  # tried again, each after the wait the collector said
    assert unmoved


class _AwayOnce(OtlpGrpcReceiver):
    """A collector that answers its first export UNAVAILABLE, then OK."""

    def _handle(self, method: str, message: Any, context: Any) -> None:
        try:
            super()._handle(method, message, context)
        finally:
            self.code = grpc.StatusCode.OK


def test_a_grpc_export_refused_once_as_unavailable_gets_there_on_a_new_channel() -> None:
    """The export tried again here, as the SDK tries it: after a first UNAVAILABLE, on a new
    channel; and again no number taken from the program's ``random``."""
    with _AwayOnce(code=grpc.StatusCode.UNAVAILABLE) as rx:
        unmoved, failed = _one_export(rx)
    assert [r.code for r in rx.requests] == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
    assert unmoved and failed == []


@pytest.mark.parametrize("status", [200, 503])
def test_an_http_export_takes_no_number_from_the_programs_random(status: int) -> None:
    """The SDK's OTLP/HTTP client (OTLP over HTTP, Langfuse, Traceloop) drew its backoff's
    jitter from the program's ``random`` before each try, even one the collector took: every
    export moved a seeded program's numbers (0.151 where 0.324 was due). A 503 is still tried
    again after about a second (0.8 to 1.2 s), and not after the next wait, which the 2 s
    export timeout leaves no room for."""
    with (
        OtlpHttpReceiver(status=status) as rx,
        _env(f"{rx.url}/v1/traces", protocol="http/protobuf", timeout="2"),
    ):
        unmoved, _ = _one_call_exported()
    assert [r.status for r in rx.requests] == [status] * (1 if status == 200 else 2)
    assert unmoved


@contextlib.contextmanager
def _env(endpoint: str, protocol: str = "grpc", timeout: str = "5") -> Iterator[None]:
    names = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OMETER_EXPORT_TIMEOUT": timeout,
    }
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
