"""The telemetry observer in-process: ids shared with the ledger, refusals exported, flush bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter import BudgetExceeded, MeteredClient, SpanRecord, load_settings
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.pricing import PriceRule
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator, unreachable_url
from tests._otlp import OtlpGrpcReceiver, OtlpHttpReceiver, metric_points, spans, wait_for

HI = [{"role": "user", "content": "hello"}]


def test_spans_and_metrics_in_process(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpHttpReceiver() as rx, OtlpGrpcReceiver() as grpc_rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
        monkeypatch.setenv("LANGFUSE_HOST", rx.url)
        monkeypatch.setenv("TRACELOOP_API_KEY", "tl")
        monkeypatch.setenv("TRACELOOP_BASE_URL", rx.url)
        client = MeteredClient(
            db_url=f"sqlite:///{tmp_path / 'l.db'}",
            department="sales",
            tenant="acme",
            on_end=lambda span: span.attributes.update({"app.feature": "faq"}),
        )
        client.meter.ledger.add_price_rule(
            PriceRule(pattern="*", currency="USD", per_request=Decimal(1))
        )
        list(client.chat(model="llama3.1:8b", messages=HI, stream=True))
        client.meter.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="day", limit=1, currency="USD")
        )
        assert client.meter.budgets is not None
        client.meter.budgets.reload_soon()
        with pytest.raises(BudgetExceeded):
            client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(
            lambda: s if len(s := spans(rx)) >= 6 else None, what="two spans to three exporters"
        )
        assert {r.path for r in rx.requests} >= {
            "/v1/traces",
            "/api/public/otel/v1/traces",
            "/v1/metrics",
        }
        ledger = {s.id: s for s in client.meter.ledger.latest(SpanFilter(), 10)}
        ok = next(v for v in views if v.attributes["ometer.status"] == "ok")
        assert ok.attributes["app.feature"] == "faq"
        assert ledger[ok.attributes["ometer.span.id"]].trace_id == ok.trace_id
        refused = next(v for v in views if v.attributes["ometer.status"] == "rejected")
        assert refused.attributes["error.type"] == "budget_exceeded" and refused.status_code == 2
        points = metric_points(rx)
        port = int(emulator.url.rsplit(":", 1)[1])
        for name in ("gen_ai.client.token.usage", "gen_ai.client.operation.duration"):
            # The GenAI conventions recommend the server on the metrics too.
            servers = [(p.attributes.get("server.address"), p.attributes.get("server.port")) for p in points[name]]  # fmt: skip
            # ... when there is one: the refused call was sent to none, and names none.
            assert set(servers) <= {("127.0.0.1", port), (None, None)}
            assert ("127.0.0.1", port) in servers
        assert "server.address" not in refused.attributes
        # grpc with the same observer code
        monkeypatch.delenv("LANGFUSE_HOST")
        monkeypatch.delenv("TRACELOOP_API_KEY")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        grpc_client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'g.db'}")
        grpc_client.embed(model="nomic-embed-text", input="x")
        grpc_telemetry = telemetry_for(load_settings())
        assert grpc_telemetry is not None and grpc_telemetry is not telemetry
        grpc_telemetry.shutdown()
        (view,) = wait_for(lambda: spans(grpc_rx), what="a grpc span")
        assert view.name == "embeddings nomic-embed-text"
        telemetry.shutdown()


def test_failed_exports_are_reported_once(
    emulator: OllamaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = unreachable_url()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
    client.chat(model="llama3.1:8b", messages=HI)
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None
    telemetry.shutdown()
    # Refused at once, or (a busy machine) still trying when the timeout ends: one line either way.
    err = capsys.readouterr().err
    assert err.count("warning: could not export telemetry") == 1
    assert f"{url}/v1/traces" in err


@settings(max_examples=200, deadline=None)
@given(
    started=st.datetimes(datetime(1970, 1, 2), datetime(2200, 1, 1), timezones=st.just(UTC)),
    latency_us=st.integers(0, 86_400 * 10**6),
)
def test_an_exported_span_has_the_ledgers_times_to_the_microsecond(
    started: datetime, latency_us: int
) -> None:
    """Its start and end were ``int(moment.timestamp() * 1e6)``: a float, so one instant in
    fifty (2026's included) came out a microsecond early, and the span's duration differed
    from the call's latency by one."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ollama_meter.telemetry._observer import TelemetryObserver
    from tests.factories import make_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = TelemetryObserver(provider.get_tracer("test"), None)
    ended = started + timedelta(microseconds=latency_us)
    span = make_span(started_at=started, ended_at=ended, latency_ns=latency_us * 1000)
    observer.on_start(span)
    observer.on_end(span)
    [otel] = exporter.get_finished_spans()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert otel.start_time == (started - epoch) // timedelta(microseconds=1) * 1000
    assert otel.end_time is not None and otel.start_time is not None
    assert otel.end_time - otel.start_time == latency_us * 1000


@pytest.mark.parametrize(
    "route",
    sorted(
        __import__("ollama_meter.gateway._requests", fromlist=["_"]).OLLAMA_ROUTES.keys()
        | __import__("ollama_meter.gateway._requests", fromlist=["_"]).OPENAI_ROUTES.keys()
    ),
)
def test_every_metered_route_exports_an_operation_name_the_genai_conventions_define(
    route: str,
) -> None:
    """The ledger names a call by its route (``openai.chat`` for ``/v1/chat/completions``),
    and that name went out as ``gen_ai.operation.name``, in the span's name and on every
    metric: no backend groups ``openai.chat`` with ``chat``. Each route's calls now carry the
    conventions' value (chat, text_completion, embeddings), the ledger keeps its own."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
        GenAiOperationNameValues,
    )

    from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES
    from ollama_meter.telemetry import _semconv as sc
    from ollama_meter.telemetry._observer import TelemetryObserver
    from tests.factories import make_span

    operation = {**OLLAMA_ROUTES, **OPENAI_ROUTES}[route].operation
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    meters = MeterProvider(metric_readers=[reader])
    observer = TelemetryObserver(provider.get_tracer("test"), meters.get_meter("test"))
    span = make_span(operation=operation, ended_at=datetime(2026, 11, 10, 12, 0, 1, tzinfo=UTC))
    observer.on_start(span)
    observer.on_end(span)
    [otel] = exporter.get_finished_spans()
    defined = {value.value for value in GenAiOperationNameValues}
    named = otel.attributes[sc.GEN_AI_OPERATION_NAME]
    assert named in defined and otel.name == f"{named} llama3.1:8b", (operation, named)
    data = reader.get_metrics_data()
    labels = {
        point.attributes[sc.GEN_AI_OPERATION_NAME]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name.startswith("gen_ai.")
        for point in metric.data.data_points
    }
    assert labels == {named}


def test_each_signal_is_sent_by_its_own_protocol_with_its_own_headers(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` was ignored (the spans went over http to a grpc
    port, every export failing); with both ``_HEADERS`` and ``_TRACES_HEADERS`` set, the spans
    carried the general value of a header both name, where the signal's own wins."""
    with OtlpHttpReceiver() as rx, OtlpGrpcReceiver() as grpc_rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-key=general,x-all=1")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", grpc_rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=traces")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}", department="sales")
        client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        (view,) = wait_for(lambda: spans(grpc_rx), what="the span over grpc")
        assert view.name == "chat llama3.1:8b"
        (exported,) = grpc_rx.requests
        assert exported.metadata["x-key"] == "traces" and "x-all" not in exported.metadata
        (metrics,) = wait_for(lambda: rx.requests, what="the metrics over http")
        assert metrics.path == "/v1/metrics"
        assert (metrics.headers["x-key"], metrics.headers["x-all"]) == ("general", "1")
        telemetry.shutdown()


def test_otel_sdk_disabled_turns_telemetry_off_and_the_ledger_keeps_real_ids(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_SDK_DISABLED=true`` (the spec's switch) made the SDK hand ometer a tracer of
    non-recording spans while the exporters ran: nothing was sent, nothing said so, and every
    ledger row got the all-zero trace and span ids, one "trace" for every call."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("OTEL_SDK_DISABLED", " True ")
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}", department="sales")
        client.chat(model="llama3.1:8b", messages=HI)
        client.chat(model="llama3.1:8b", messages=HI)
        assert telemetry_for(load_settings()) is None
        rows = client.meter.ledger.latest(SpanFilter(), 10)
        assert len({row.trace_id for row in rows}) == 2
        assert all(set(row.trace_id) != {"0"} and set(row.span_id) != {"0"} for row in rows)
        assert rx.requests == []


def test_two_clients_with_their_own_keys_export_each_with_its_own(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporters are shared by the settings that make them, and the keys were not among
    them: a second client given another Traceloop key sent its spans with the first one's
    (to the first one's account), and a second Langfuse secret went unused the same way."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "LANGFUSE_PUBLIC_KEY", "TRACELOOP_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    db = f"sqlite:///{tmp_path / 'l.db'}"
    hi = [{"role": "user", "content": "hi"}]
    with OtlpHttpReceiver() as rx:
        for key, secret in (("one", "sk-1"), ("two", "sk-2")):
            keys = {
                "traceloop_api_key": key,
                "traceloop_base_url": rx.url,
                "langfuse_public_key": "pk",
                "langfuse_secret_key": secret,
                "langfuse_host": rx.url,
            }
            MeteredClient(db_url=db, **keys).chat(model="llama3.1:8b", messages=hi)
            telemetry = telemetry_for(load_settings(**keys))
            assert telemetry is not None and telemetry.flush()
        wait_for(lambda: len(rx.requests) >= 4 or None, what="four exports")
    sent = {(r.path, r.headers["authorization"]) for r in rx.requests}
    assert {auth for path, auth in sent if path == "/v1/traces"} == {"Bearer one", "Bearer two"}
    langfuse = {auth for path, auth in sent if path.startswith("/api/public/otel")}
    assert len(langfuse) == 2


def test_a_collector_gets_the_ledgers_cost_and_tenant_whatever_a_hook_sets(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook's ``ometer.cost`` of 0 and its ``ometer.tenant`` went on the wire in place of
    the metered ones: the collector summed a cost the ledger never held."""

    def forge(span: SpanRecord) -> None:
        span.attributes.update(
            {"ometer.cost": "0", "ometer.tenant": "someone-else", "gen_ai.usage.input_tokens": 0}
        )
        span.attributes["app.feature"] = "faq"

    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{rx.url}/v1/traces")
        client = MeteredClient(
            db_url=f"sqlite:///{tmp_path / 'l.db'}", tenant="acme", department="sales", on_end=forge
        )
        client.meter.ledger.add_price_rule(
            PriceRule(pattern="*", currency="USD", per_request=Decimal("0.25"))
        )
        reply = client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        (view,) = wait_for(lambda: spans(rx), what="the call's span")
        telemetry.shutdown()
    (row,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert reply.meter is not None and reply.meter.cost == Decimal("0.25")
    assert (row.cost_total, row.tenant, row.input_tokens) == (
        250_000,
        "acme",
        reply.meter.input_tokens,
    )
    exported = view.attributes
    assert (exported["ometer.cost"], exported["ometer.tenant"], exported["app.feature"]) == (
        "0.250000",
        "acme",
        "faq",
    )
    assert exported["gen_ai.usage.input_tokens"] == row.input_tokens > 0
