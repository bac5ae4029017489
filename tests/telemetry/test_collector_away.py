"""A collector that is away, hung, failing or lying costs the meter nothing: calls, spans, exit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import example, given, settings, strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.exporter import _MAX_RETRYS
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter import MeteredClient, load_settings
from ollama_meter._runtime import reset_runtime
from ollama_meter._text import ACTED_ON
from ollama_meter.ledger import SpanFilter
from ollama_meter.records import make_storable, storable_text
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.telemetry._content import document
from ollama_meter.telemetry._observer import MAX_EXPORTED_TEXT, TelemetryObserver
from ollama_meter.telemetry._session import refused
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.telemetry._size import MAX_REQUEST_BYTES
from ollama_meter.testing import OllamaEmulator, unreachable_url
from tests._otlp import (
    EndlessCollector,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    SilentCollector,
    metric_points,
    spans,
    wait_for,
)
from tests.factories import make_span
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]

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


def _one_span_then_exit(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """Export one span to the configured (unreachable) endpoint, shut down: the one warning line."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    telemetry = Telemetry(load_settings())
    span = make_storable(make_span())
    telemetry.observer.on_start(span)
    telemetry.observer.on_end(span)
    telemetry.shutdown()
    (line,) = capsys.readouterr().err.splitlines()
    return line


def _exit_of(
    env: dict[str, str], script: str, *args: str
) -> tuple[subprocess.Popen[str], str, float]:
    """Run ``script`` in a child until it says it is exiting; the child, its stderr, and how
    long its exit took from there."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "exiting\n"
    started = time.monotonic()
    _, err = child.communicate(timeout=120)
    return child, err, time.monotonic() - started


def test_exit_waits_at_most_the_export_timeout_for_a_collector_that_never_answers() -> None:
    """The SDK's own exit hooks flushed again after ours, one export timeout per batch queued."""
    timeout = 2.0
    with SilentCollector() as collector:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OMETER_EXPORT_TIMEOUT": str(timeout),
        }
        child, err, took = _exit_of(env, _EXIT_SCRIPT)
        tries = collector.connections
    assert child.returncode == 0
    assert err.count("warning: could not export telemetry") == 1 and "Traceback" not in err
    # Before, the SDK's exit hooks tried again per queued batch of 512, each waiting out the
    # export timeout: 5 tries and 10 s here. Counted, not timed, so a busy machine cannot fail it.
    assert 1 <= tries <= 2, f"{tries} exports tried at exit, in {took:.1f} s"


_CLIENTS_EXIT_SCRIPT = """
import sys
from ollama_meter.config import load_settings
from ollama_meter.telemetry import telemetry_for

for key in ("k1", "k2", "k3"):  # a client each, with its own key: a telemetry each
    settings = load_settings(traceloop_api_key=key, traceloop_base_url=sys.argv[1])
    telemetry_for(settings).observer.tracer.start_span("call").end()
print("exiting", flush=True)
"""


def test_a_process_with_several_telemetries_stops_them_together_within_one_bound() -> None:
    """Each configuration's telemetry (a client given its own Traceloop or Langfuse key has
    one) stopped at exit after the one before it: three waited three times the bound for a
    collector that never answered, and said so in three lines."""
    timeout = 2.0
    with SilentCollector() as collector:
        env = {
            **os.environ,
            "OMETER_EXPORT_TIMEOUT": str(timeout),
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing goes out before the exit
        }
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "LANGFUSE_PUBLIC_KEY", "TRACELOOP_API_KEY"):
            env.pop(name, None)
        child, err, took = _exit_of(env, _CLIENTS_EXIT_SCRIPT, collector.url)
        accepted = list(collector.accepted_at)
    assert child.returncode == 0 and "Traceback" not in err
    assert err.count("warning: could not export telemetry") == 1, err
    # Ordered, not timed: every export began before the first one's bound ran out (one after
    # the other, each began once the one before had waited its whole timeout).
    assert len(accepted) == 3, accepted
    assert max(accepted) - min(accepted) < timeout, f"exit took {took:.1f} s"


def test_a_runtime_reset_stops_its_telemetries_together(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An application that embeds ometer resets its runtime on shutdown: the runtime closed
    each configuration's telemetry after the one before it, each waiting its whole bound."""
    timeout = 1.0
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "LANGFUSE_PUBLIC_KEY", "TRACELOOP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", str(timeout))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # nothing goes out before the reset
    with SilentCollector() as collector:
        for key in ("k1", "k2", "k3"):
            settings = load_settings(traceloop_api_key=key, traceloop_base_url=collector.url)
            telemetry = telemetry_for(settings)
            assert telemetry is not None
            telemetry.observer.tracer.start_span("call").end()
        reset_runtime()
        accepted = list(collector.accepted_at)
    assert capsys.readouterr().err.count("warning: could not export telemetry") == 1
    assert len(accepted) == 3 and max(accepted) - min(accepted) < timeout, accepted


def _chat(gw: Gateway, model: str) -> int:
    body = json.dumps({"model": model, "messages": HI, "stream": False})
    return gw.client.post("/api/chat", content=body.encode()).status_code


def test_a_name_protobuf_cannot_encode_never_costs_the_other_calls_their_spans(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lone surrogate in one model name made the whole batch fail to encode: none exported."""
    monkeypatch.setenv("OMETER_JOURNAL", "false")  # the journal happened to clean names first
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        gw = app_on(emulator.url, sqlite_url)
        assert [_chat(gw, m) for m in ("llama3.1:8b", "ll\ud800ama", "llama3.1:8b")] == [
            200,
            404,
            200,
        ]
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 3 else None, what="three spans")
        telemetry.shutdown()
    assert sorted(v.name for v in views) == sorted(
        ["chat llama3.1:8b", "chat ll\ufffdama", "chat llama3.1:8b"]
    )
    assert not telemetry.failures()
    assert len(gw.ledger.latest(SpanFilter(), 10)) == 3


@settings(max_examples=200, deadline=None)
@given(text=st.text(), role=st.sampled_from(["user", "assistant"]))
def test_exported_content_is_valid_json_within_its_bound(text: str, role: str) -> None:
    """A 1 MB prompt was exported whole: thousands of such spans wait in memory for a collector."""
    exported = document([(role, [text])])
    assert exported is not None
    assert len(exported) <= MAX_EXPORTED_TEXT
    (message,) = json.loads(exported)
    content = message["parts"][0]["content"]
    assert message["role"] == role
    clean = storable_text(text, len(text) + 1)
    assert content == clean or (content.endswith("…") and clean.startswith(content[:-1]))


def test_hook_attributes_and_content_are_exported_bounded_and_encodable(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = "ab\u202e<script>\x07" * 20_000  # 200,000 characters
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        client = MeteredClient(
            db_url=f"sqlite:///{tmp_path / 'l.db'}",
            on_end=lambda span: span.attributes.update(
                {"app.odd": "x\ud800y", "app.big": "z" * 1_000_000, "app.list": ["\udfff"]}
            ),
        )
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": prompt}])
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        (view,) = wait_for(lambda: spans(rx), what="a span")
        telemetry.shutdown()
    a = view.attributes
    assert (a["app.odd"], a["app.list"]) == ("x\ufffdy", ("\ufffd",))
    assert len(a["app.big"]) == MAX_EXPORTED_TEXT and a["app.big"].endswith("…")
    (message,) = json.loads(a[sc.GEN_AI_INPUT_MESSAGES])
    assert prompt.startswith(message["parts"][0]["content"][:-1])
    assert max(len(v) for v in a.values() if isinstance(v, str)) <= MAX_EXPORTED_TEXT
    (row,) = client.meter.ledger.latest(SpanFilter(), 1)
    assert row.prompt is not None and prompt in row.prompt  # the ledger keeps it whole


def test_metric_labels_unencodable_text_reaches_are_exported_cleaned_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model named with a lone surrogate (JSON can say "\\udfff"): the OTLP encoder
    silently dropped that label from every metric point (span attributes were cleaned).
    One a server answered for: a name none has is no label of its own (``_served.py``)."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        telemetry = Telemetry(load_settings())
        span = make_span(request_model="llama\udfff3.1", response_model="llama\udfff3.1")
        span.latency_ns = 10**8
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)
        assert telemetry.flush()
        points = wait_for(lambda: metric_points(rx) or None, what="metrics")
        telemetry.shutdown()
    for name in (sc.METRIC_REQUESTS, sc.METRIC_OPERATION_DURATION):
        assert points[name], name
        for point in points[name]:
            assert point.attributes[sc.GEN_AI_REQUEST_MODEL] == "llama\ufffd3.1", name


@pytest.mark.parametrize("collector", ["silent", "garbage", "500", "429"])
def test_the_gateway_serves_and_records_every_call_while_the_collector_fails(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    collector: str,
) -> None:
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    receivers = {
        "silent": SilentCollector(),
        "garbage": SilentCollector(answer=b"\x00\xffnot HTTP at all\r\n\r\n"),
    }
    receiver = receivers.get(collector) or OtlpHttpReceiver(int(collector))
    with receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        gw = app_on(emulator.url, sqlite_url)
        assert [_chat(gw, "llama3.1:8b") for _ in range(5)] == [200] * 5
        assert len(gw.ledger.latest(SpanFilter(), 10)) == 5  # the record never waits on telemetry
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None
        telemetry.shutdown()
    assert capsys.readouterr().err.count("warning: could not export telemetry") == 1


def test_content_goes_in_batches_a_grpc_collector_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """512 spans with their text made 17 MB; a collector takes 4 MiB and refused it whole."""
    with OtlpGrpcReceiver() as rx:  # grpc's default limit, as a collector's
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        telemetry = Telemetry(load_settings())
        for _ in range(600):
            span = make_storable(make_span(prompt="p" * 20_000, reply="r" * 20_000))
            telemetry.observer.on_start(span)
            telemetry.observer.on_end(span)
        assert telemetry.flush()
        telemetry.shutdown()
        assert len(spans(rx)) == 600
    assert telemetry.failures() == []


def test_metrics_go_in_exports_a_grpc_collector_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers name models: each new name is a point of every GenAI histogram and counter (up
    to the SDK's 2,000 per instrument), and all went in one export every minute, 5 MiB with
    names of 255 characters. A collector takes 4 MiB over grpc and refused it whole, every
    minute for the life of the process (the points are cumulative): no metric arrived."""
    calls = 2100
    with OtlpGrpcReceiver() as rx:  # grpc's default limit, as a collector's
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        telemetry = Telemetry(load_settings())
        for n in range(calls):
            model = f"{n:05d}" + "m" * 250
            span = make_storable(
                make_span(request_model=model, response_model=model, stream=True, ttft_ns=10**8)
            )
            telemetry.observer.on_start(span)
            telemetry.observer.on_end(span)
        assert telemetry.flush()
        assert rx.requests and {request.code for request in rx.requests} == {grpc.StatusCode.OK}
        requests = metric_points(rx)[sc.METRIC_REQUESTS]  # one flush: each point once
        assert sum(point.value or 0 for point in requests) == calls
        telemetry.shutdown()
    assert telemetry.failures() == []


def test_the_warning_names_each_place_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc sends traces and metrics to one endpoint: the warning named it twice."""
    endpoint = unreachable_url()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    line = _one_span_then_exit(monkeypatch, capsys)
    assert line.startswith("warning: could not export telemetry to") and line.count(endpoint) == 1


def test_a_running_process_says_once_when_exports_fail_and_when_they_work_again(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A gateway runs for weeks: a collector refusing every export was said only at its exit."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    caplog.set_level("INFO", logger="ollama_meter.telemetry")
    with OtlpHttpReceiver(status=401) as rx:
        url = f"{rx.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        telemetry.span_exporters[0].clock = lambda: 0.0  # drops said once: no 10 s go by

        def export() -> None:
            span = make_storable(make_span())
            telemetry.observer.on_start(span)
            telemetry.observer.on_end(span)
            telemetry.flush()

        export()
        export()
        rx.status = 200
        export()
        export()
        telemetry.shutdown()
    said = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "ollama_meter.telemetry"
    ]
    assert said == [
        (
            "WARNING",
            f"could not export spans to {url} (it answered HTTP 401); they are dropped until "
            "it answers (the ledger keeps every call)",
        ),
        ("WARNING", f"spans not sent to {url}: 1 (the ledger keeps every call)"),
        ("INFO", f"exporting spans to {url} again"),
    ]
    assert [r.status for r in rx.requests] == [401, 401, 200, 200]
    assert capsys.readouterr().err.count("warning: could not export telemetry") == 1  # at exit


def test_a_collector_that_fails_every_other_export_is_said_at_most_every_10_s(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a balancer with one dead backend, every other export fails: the log said
    "could not export" and "exporting again" for each, two lines per export, for as long as
    it lasted (a busy gateway exports several times a second). The start of a failure is
    said at most every 10 s, and its end only when its start was said."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    caplog.set_level("INFO", logger="ollama_meter.telemetry")
    now = [0.0]
    with OtlpHttpReceiver() as rx:
        url = f"{rx.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        exporter.clock = lambda: now[0]
        for second in (0, 1, 2, 3, 4, 11, 12):
            now[0] = float(second)
            for status in (401, 200):
                rx.status = status
                _end_spans(telemetry, 1)
                assert telemetry.flush()
        telemetry.shutdown()
    said = [
        (r.levelname, r.getMessage()[:40])
        for r in caplog.records
        if r.name == "ollama_meter.telemetry" and "spans not sent" not in r.getMessage()
    ]
    assert said == 2 * [
        ("WARNING", f"could not export spans to {url}"[:40]),
        ("INFO", f"exporting spans to {url} again"[:40]),
    ]
    assert exporter.dropped == 7


_TLS_SCRIPT = """
from ollama_meter.config import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry import telemetry_for
from tests.factories import make_span

telemetry = telemetry_for(load_settings())
for _ in range(3):
    span = make_storable(make_span())
    telemetry.observer.on_start(span)
    telemetry.observer.on_end(span)
telemetry.flush()
import os
print(os.environ.get("GRPC_VERBOSITY"))  # what a program `ometer run` starts would inherit
"""


def test_grpc_over_tls_to_a_plain_collector_costs_one_warning_line() -> None:
    """gRPC's own C library wrote a line to stderr for each failed TLS handshake
    ("I1202 ... Handshake failed with error SSL_ERROR_SSL: ... WRONG_VERSION_NUMBER"),
    outside Python's logging, at every try of every export: a gateway with an https://
    endpoint to a plain collector filled its log with them."""
    with OtlpHttpReceiver() as rx:  # plain HTTP: no TLS there
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url.replace("http://", "https://"),
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OMETER_EXPORT_TIMEOUT": "1",
        }
        done = subprocess.run(
            [sys.executable, "-c", _TLS_SCRIPT],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parents[2],
        )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # The rest are ometer's own log lines (no handler in this script: Python's last resort).
    ours = ("could not export ", "spans not sent to ", "warning: could not export telemetry")
    assert [line for line in lines if not line.startswith(ours)] == []
    assert len([line for line in lines if line.startswith("warning:")]) == 1
    assert done.stdout == "None\n"


def test_an_endpoints_credentials_never_reach_the_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = unreachable_url().removeprefix("http://")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://ops:s3cret@{host}")
    line = _one_span_then_exit(monkeypatch, capsys)
    assert f"http://{host}/v1/traces" in line and "s3cret" not in line


_ANY_TEXT = st.text(max_size=50) | st.sampled_from(["\ud800", "a\x00b", "\u202e", "x" * 20_000])


@settings(max_examples=100, deadline=None)
@given(
    model=_ANY_TEXT,
    user=_ANY_TEXT,
    error=_ANY_TEXT,
    tag=_ANY_TEXT,
    hooked=st.dictionaries(_ANY_TEXT, _ANY_TEXT | st.lists(_ANY_TEXT, max_size=3), max_size=3),
    content=_ANY_TEXT,
)
def test_every_span_the_observer_makes_encodes_and_is_bounded(
    model: str, user: str, error: str, tag: str, hooked: dict[str, Any], content: str
) -> None:
    """Whatever text a call carries, its span encodes: one that cannot fails its whole batch.
    Its metric points too: the encoder dropped a label it could not encode, without a word."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    observer = TelemetryObserver(
        provider.get_tracer("t"), meters.get_meter("t"), capture_content=True
    )
    span = make_span(request_model=model, user=user, tags={tag: tag}, prompt=content, reply=content)
    observer.on_start(span)  # raw: a meter makes it storable first, a hook may not
    span.attributes.update(hooked)
    span.fail("upstream_5xx", error)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    encode_spans([otel]).SerializeToString()  # raised UnicodeEncodeError for a lone surrogate
    texts = [otel.name, otel.status.description or ""]
    for value in otel.attributes.values():
        texts.extend(value if isinstance(value, tuple) else [value])
    assert all(len(text) <= MAX_EXPORTED_TEXT for text in texts if isinstance(text, str))
    metrics = reader.get_metrics_data()
    assert metrics is not None
    labels = [
        point.attributes
        for resource in metrics.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    assert labels and all(sc.GEN_AI_REQUEST_MODEL in label for label in labels)
    for label in labels:
        for value in label.values():
            if isinstance(value, str):
                value.encode("utf-8")  # what the encoder does; it dropped what raised


def test_an_integer_past_64_bits_from_a_hook_is_exported_as_its_digits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTLP carries 64-bit integers: the encoder dropped the attribute, without a word."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        span.attributes.update({"app.big": 2**64, "app.list": [2**63, -(2**63)], "app.ok": 7})
        telemetry.observer.on_end(span)
        assert telemetry.flush()
        (view,) = wait_for(lambda: spans(rx), what="a span")
        telemetry.shutdown()
    a = view.attributes
    assert (a["app.big"], a["app.list"], a["app.ok"]) == (
        str(2**64),
        (str(2**63), -(2**63)),
        7,
    )


@pytest.mark.parametrize(
    ("chunk", "limit", "pause", "length", "head_pause"),
    [
        (b"<html>" * 10_000, 64 << 20, 0.0, False, 0.0),  # 64 MB as fast as it goes: all read
        (b"<p>", 3_000, 0.01, False, 0.0),  # a trickle for 10 s: each read within the timeout
        # A byte every 0.3 s of a body whose length is said: a read of 8 KiB waited for all
        # of it (a 60 KB answer: 5 hours of the export thread, every span dropped meanwhile).
        (b"x", 40, 0.3, True, 0.0),
        # The status line and headers a byte every 0.1 s: the body's bounds were never
        # reached (65 KB of a status line alone: 2 hours at that pace, the export held).
        (b"x", 1, 0.0, True, 0.1),
    ],
    ids=["endless", "trickling", "trickling-with-length", "trickling-head"],
)
def test_an_answer_that_does_not_end_is_cut_and_the_export_fails(
    monkeypatch: pytest.MonkeyPatch,
    chunk: bytes,
    limit: int,
    pause: float,
    length: bool,
    head_pause: float,
) -> None:
    """requests read a collector's whole answer, its timeout bounding each read, not the
    answer: an endless body took the exporter to 5 GB in 20 s, and the export never ended."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    with EndlessCollector(
        chunk, limit=limit, pause=pause, length=length, head_pause=head_pause
    ) as collector:
        url = f"{collector.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)
        telemetry.flush()
        # The exporter hung up before the collector's answer was over, and did not ask again.
        assert wait_for(collector.over, 30, what="the answer over") == (1, 0)
        assert collector.connections == 1
        assert telemetry.failures() == [url]
        telemetry.shutdown()


def _end_spans(telemetry: Telemetry, count: int) -> None:
    for _ in range(count):
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)


def test_spans_a_slow_collector_has_no_room_for_are_counted_and_said_at_most_every_10_s(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's full queue dropped spans with a log line each, which is silenced: spans
    were lost to a collector slower than the calls without a word. And a queue set smaller
    than a batch (OTEL_BSP_MAX_QUEUE_SIZE=4) failed every command with a ValueError."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "60")  # the collector answers when told
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # exports go by full batches only
    caplog.set_level("INFO", logger="ollama_meter.telemetry")
    now = [0.0]
    with OtlpHttpReceiver() as rx:
        rx.answering.clear()
        url = f"{rx.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        exporter.clock = lambda: now[0]
        _end_spans(telemetry, 4)  # a batch: sent, and held by the collector
        wait_for(lambda: rx.requests, what="the first export")
        _end_spans(telemetry, 4 + 3)  # four wait for it, three have no room
        now[0] = 10.0
        _end_spans(telemetry, 1)
        rx.answering.set()
        assert telemetry.flush()
        telemetry.shutdown()
    assert len(spans(rx)) == 8 and exporter.dropped == 4
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert said == [
        f"spans not sent to {url}: 1 (the ledger keeps every call)",
        f"spans not sent to {url} in the last 10 s: 3, 4 in all",
    ]


def test_gateway_calls_never_wait_for_a_collector_that_has_not_answered(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "60")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    with OtlpHttpReceiver() as rx:
        rx.answering.clear()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        gw = app_on(emulator.url, sqlite_url)
        assert [_chat(gw, "llama3.1:8b") for _ in range(4)] == [200] * 4
        wait_for(lambda: rx.requests, what="the first export")
        assert [_chat(gw, "llama3.1:8b") for _ in range(20)] == [200] * 20
        # Every call answered and recorded while the collector held its first export.
        assert len(rx.requests) == 1 and len(gw.ledger.latest(SpanFilter(), 50)) == 24
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None
        rx.answering.set()
        assert telemetry.flush()
        telemetry.shutdown()
    assert len(spans(rx)) == 8 and telemetry.span_exporters[0].dropped == 16


def test_a_hooks_many_attributes_never_push_out_the_calls_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A span holds 128 attributes and the SDK drops the oldest to make room: a hook that
    added 150 pushed out every one of ometer's (model, tenant, tokens, cost), silently."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        for hooked in (150, 0):
            span = make_storable(make_span(user="ann"))
            telemetry.observer.on_start(span)
            span.attributes.update({f"app.k{n:03}": n for n in range(hooked)})
            span.attributes["ometer.tenant"] = "from-hook"  # never the hook's to replace
            telemetry.observer.on_end(span)
        assert telemetry.flush()
        crowded, alone = wait_for(lambda: s if len(s := spans(rx)) == 2 else None, what="2 spans")
        telemetry.shutdown()
    own = [k for k in alone.attributes if not k.startswith("app.") and k != "ometer.span.id"]
    assert len(crowded.attributes) == 128  # OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT
    assert {k: crowded.attributes[k] for k in own} == {k: alone.attributes[k] for k in own}
    assert crowded.attributes["ometer.tenant"] == "acme"
    kept = sorted(k for k in crowded.attributes if k.startswith("app."))
    assert kept == [f"app.k{n:03}" for n in range(128 - len(own) - 1)]  # the first ones set
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert said == [
        "a hook set ometer.tenant on a span: ometer's own (what the call cost, its tokens, who "
        "it is charged to), exported as metered, not as the hook set them; name the hook's own "
        "attributes (e.g. app.cost); said once",
        f"a hook set 150 attributes on a span; {150 - len(kept)} not exported, past "
        "the 128 a span holds (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT); said once",
    ]


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]
)
def test_the_collectors_headers_never_go_to_langfuse_or_traceloop(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The SDK's HTTP exporter adds the OTEL_EXPORTER_OTLP_*HEADERS of the environment to
    any endpoint it is given: the collector's key went to Langfuse's and Traceloop's servers."""
    with OtlpHttpReceiver() as collector, OtlpHttpReceiver() as lf, OtlpHttpReceiver() as tl:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.url}/v1/traces")
        monkeypatch.setenv(variable, "x-collector-key=s3cret")
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")
        monkeypatch.setenv("LANGFUSE_HOST", lf.url)
        monkeypatch.setenv("TRACELOOP_API_KEY", "tl-key")
        monkeypatch.setenv("TRACELOOP_BASE_URL", tl.url)
        telemetry = Telemetry(load_settings())
        _end_spans(telemetry, 1)
        assert telemetry.flush()
        telemetry.shutdown()
        sent = {
            name: [r.headers.get("x-collector-key") for r in rx.requests]
            for name, rx in (("collector", collector), ("langfuse", lf), ("traceloop", tl))
        }
    assert sent == {"collector": ["s3cret"], "langfuse": [None], "traceloop": [None]}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_collector_that_redirects_has_not_taken_the_spans(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """The exporter counts any 2xx or 3xx as delivered and follows no redirect: an endpoint
    behind a proxy that sends http to https lost every span while all exports 'succeeded'."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    with OtlpHttpReceiver(status=status) as rx:
        url = f"{rx.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        _end_spans(telemetry, 2)
        telemetry.flush()
        telemetry.shutdown()
    assert [r.status for r in rx.requests] == [status]  # asked once: no retry
    assert telemetry.failures() == [url] and telemetry.span_exporters[0].dropped == 2


def test_a_grpc_collector_out_of_a_resource_with_no_retry_info_is_asked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RESOURCE_EXHAUSTED with no RetryInfo: OTLP says it is not to be retried (the same
    export gets the same answer), and the SDK sent it again with backoff until its timeout
    (3 requests in 3 s). An export too small to cut is asked once, and fails."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with OtlpGrpcReceiver(code=grpc.StatusCode.RESOURCE_EXHAUSTED) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url := rx.endpoint)
        telemetry = Telemetry(load_settings())
        _end_spans(telemetry, 2)
        telemetry.flush()
        telemetry.shutdown()
    assert [r.code for r in rx.requests] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert telemetry.failures() == [url] and telemetry.span_exporters[0].dropped == 2


def test_a_grpc_collector_that_throttles_is_asked_again_when_it_says(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RESOURCE_EXHAUSTED with a RetryInfo is a collector throttling, not an export too large:
    the SDK asks again after the delay it says, and exports are not cut."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "1")
    with OtlpGrpcReceiver(code=grpc.StatusCode.RESOURCE_EXHAUSTED) as rx:
        rx.retry_after = 0.01
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint)
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        _end_spans(telemetry, 2)
        telemetry.flush()
        telemetry.shutdown()
    assert len(rx.requests) == _MAX_RETRYS  # the SDK's tries, each after the delay said
    assert exporter.limit == MAX_REQUEST_BYTES and exporter.dropped == 2
    assert not [r for r in caplog.records if "too large" in r.getMessage()]


@contextlib.contextmanager
def _answering(
    answer: Any, protocol: str, signal: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OtlpHttpReceiver | OtlpGrpcReceiver, str]]:
    """A collector of ``protocol`` that answers each export of ``signal`` with ``answer``, set
    as where that signal goes; and its URL as the log names it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    rx = OtlpGrpcReceiver() if protocol == "grpc" else OtlpHttpReceiver()
    with rx:
        if isinstance(rx, OtlpGrpcReceiver):
            rx.answer, url = answer, rx.endpoint
        else:
            rx.answer, url = answer.SerializeToString(), f"{rx.url}/v1/{signal}"
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", url)
        yield rx, url


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_a_collector_refuses_in_a_partial_success_are_counted_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """OTLP's partial_success: 200, with the spans refused and why. The exporter read no
    answer: refused spans were lost without a word (over gRPC too, where the SDK's exporter
    reads none either: 0 counted, nothing said)."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    refused = trace_service_pb2.ExportTraceServiceResponse(
        partial_success=trace_service_pb2.ExportTracePartialSuccess(
            rejected_spans=2, error_message="span too old"
        )
    )
    with _answering(refused, protocol, "traces", monkeypatch) as (rx, url):
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        exporter.clock = lambda: 0.0
        for _ in range(2):
            _end_spans(telemetry, 3)
            assert telemetry.flush()
        telemetry.shutdown()
    assert len(rx.requests) == 2 and len(spans(rx)) == 6
    assert exporter.dropped == 4 and telemetry.failures() == []
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert said == [
        f"{url} refused 2 spans of an export: span too old; said once",
        f"spans not sent to {url}: 2 (the ledger keeps every call)",
    ]


def test_a_grpc_collectors_answer_too_large_to_read_has_no_span_sent_twice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC client refuses an answer past its receive limit with RESOURCE_EXHAUSTED, as a
    server refuses a request: the export got there, and was sent again as if it had not (in
    halves, each got there too: 5 MB answers, 24 spans arrived for 8). Over HTTP an answer is
    read up to 64 KiB, and one longer fails the export, not sent again: so over gRPC."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    with OtlpGrpcReceiver() as rx:
        rx.answer = trace_service_pb2.ExportTraceServiceResponse(
            partial_success=trace_service_pb2.ExportTracePartialSuccess(
                rejected_spans=1, error_message="x" * 5_000_000
            )
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url := rx.endpoint)
        telemetry = Telemetry(load_settings())
        for _ in range(8):  # 260 KB: an export large enough to be cut
            span = make_storable(make_span(prompt="p" * 20_000, reply="r" * 20_000))
            telemetry.observer.on_start(span)
            telemetry.observer.on_end(span)
        telemetry.flush()
        telemetry.shutdown()
    assert len(rx.requests) == 1 and len(spans(rx)) == 8
    assert telemetry.failures() == [url]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_collector_that_claims_more_refused_than_it_was_sent_is_not_believed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lying collector's partial_success said 2**62 spans refused of an export of 3, and its
    reason was 50 KB over several lines: the count of spans dropped read 4611686018427387904
    for ever after, and the log got forged lines. At most the spans sent are refused; the
    reason is one line of at most 200 characters."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    lie = trace_service_pb2.ExportTraceServiceResponse(
        partial_success=trace_service_pb2.ExportTracePartialSuccess(
            rejected_spans=2**62, error_message="bad\nERROR forged line\r\x1b[2J" + "x" * 50_000
        )
    )
    with OtlpHttpReceiver() as rx:
        rx.answer = lie.SerializeToString()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        (exporter,) = telemetry.span_exporters
        _end_spans(telemetry, 3)
        assert telemetry.flush()
        telemetry.shutdown()
    assert exporter.dropped == 3
    (refused, dropped) = [
        r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"
    ]
    assert "refused 3 spans" in refused and "\n" not in refused and "\r" not in refused
    assert "\x1b" not in refused and len(refused) < 400
    assert dropped.endswith(": 3 (the ledger keeps every call)")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exports_on_a_connection_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child forked after an export (gunicorn --preload) sent its spans on the parent's
    kept-alive connection to the collector: both processes' requests on one socket."""
    from tests.test_client_fork import forked

    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        telemetry = Telemetry(load_settings())
        _end_spans(telemetry, 1)
        assert telemetry.flush()  # leaves a connection in the pool

        def child() -> bool:
            _end_spans(telemetry, 1)
            return telemetry.flush()

        _, exported = forked(child)
        assert exported() is True
        _end_spans(telemetry, 1)
        assert telemetry.flush()
        telemetry.shutdown()
    parent, child_export, parent_again = rx.requests
    assert parent.peer == parent_again.peer != child_export.peer


def test_a_dead_collector_never_costs_langfuse_its_spans_at_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At exit the places were flushed one after the other within one bound: a collector
    that never answers took all of it, and Langfuse, next in line, never got the span."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "1")
    with SilentCollector() as dead, OtlpHttpReceiver() as lf:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", dead.url)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")
        monkeypatch.setenv("LANGFUSE_HOST", lf.url)
        telemetry = Telemetry(load_settings())
        _end_spans(telemetry, 1)
        telemetry.shutdown()
        got, dead_url, lf_url = len(spans(lf)), dead.url, lf.url
    assert got == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert dead_url in line and lf_url not in line


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_metric_points_a_collector_refuses_in_a_partial_success_are_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """A metrics collector's partial_success (200, with the points refused and why) was read
    by nobody: the points were lost without a word, where refused spans were said."""
    caplog.set_level("WARNING", logger="ollama_meter.telemetry")
    refused = metrics_service_pb2.ExportMetricsServiceResponse(
        partial_success=metrics_service_pb2.ExportMetricsPartialSuccess(
            rejected_data_points=2, error_message="point too old"
        )
    )
    with _answering(refused, protocol, "metrics", monkeypatch) as (rx, url):
        telemetry = Telemetry(load_settings())
        for _ in range(2):
            _end_spans(telemetry, 1)
            assert telemetry.flush()
        telemetry.shutdown()
    assert metric_points(rx)[sc.METRIC_REQUESTS][-1].value == 2  # taken: the two calls
    assert telemetry.failures() == []
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.telemetry"]
    assert said == [f"{url} refused 2 metric points of an export: point too old; said once"]


@given(st.text())
@example("bad\u200eorder\u061c")
@settings(max_examples=200)
def test_a_collectors_reason_reaches_the_log_with_nothing_a_reader_acts_on(why: str) -> None:
    """The reason a collector gives for refusing spans is said in the log, whatever handler an
    application that embeds ometer logs with: its left-to-right and Arabic letter marks (which
    reorder what a terminal shows around them) went into the line as they came."""
    answer = trace_service_pb2.ExportTraceServiceResponse(
        partial_success=trace_service_pb2.ExportTracePartialSuccess(
            rejected_spans=1, error_message=why
        )
    ).SerializeToString()
    count, said = refused(answer, "spans")
    assert count == 1
    assert not re.search(f"[\x00-\x1f{ACTED_ON}]", said), ascii(said)


class _Refused(grpc.RpcError):  # type: ignore[misc]
    """What a gRPC stub raises for a failed call, as the channel's own error says it."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing


class _Failing:
    def __init__(self, error: _Refused) -> None:
        self.error = error

    def Export(self, request: object, **options: object) -> None:
        raise self.error


@given(
    st.sampled_from(list(grpc.StatusCode)),
    st.sampled_from(["SERVER: ", "CLIENT: ", "Stream removed (CLIENT: ", ""]),
    st.booleans(),
)
def test_only_a_request_refused_as_too_large_is_cut_and_only_an_answer_too_large_is_not_retried(
    code: grpc.StatusCode, side: str, throttled: bool
) -> None:
    """RESOURCE_EXHAUSTED says three things: the collector refused the request as too large
    (cut it: TooLarge), it is throttling (a RetryInfo: the SDK asks again), or this client
    refused the answer as too large (the export got there: AnswerTooLarge, neither cut nor
    sent again). Every other failure is a try's failure, tried again as the SDK would."""
    from ollama_meter.telemetry._grpc import AnswerTooLarge, GrpcAnswers, TooLarge, _Stub

    trailing = (("google.rpc.retryinfo-bin", b""),) if throttled else ()
    error = _Refused(code, f"{side}Received message larger than max (9 vs. 1)", trailing)
    answers = GrpcAnswers()
    exhausted = code is grpc.StatusCode.RESOURCE_EXHAUSTED
    expected: type[Exception] = grpc.RpcError
    if exhausted and "CLIENT" in side:
        expected = AnswerTooLarge
    elif exhausted and not throttled:
        expected = TooLarge
    with pytest.raises(expected):
        _Stub(_Failing(error), answers, exporter=None).once(object())
    assert answers.too_large is (expected is TooLarge)
