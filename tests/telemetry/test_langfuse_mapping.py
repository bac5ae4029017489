"""The attributes Langfuse maps from an OTLP span hold what it takes, or it drops them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter import MeteredClient, load_settings
from ollama_meter._names import CLIENT_SPAN_TAG
from ollama_meter.pricing import PriceRule
from ollama_meter.records import MAX_TAG_KEY, MAX_TAG_VALUE, Status, make_storable
from ollama_meter.telemetry import _semconv as sc, telemetry_for
from ollama_meter.telemetry._observer import LANGFUSE_MAX_TAG, TelemetryObserver
from ollama_meter.testing import OllamaEmulator
from tests._observed import observed
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1)


@settings(max_examples=100, deadline=None)
@given(
    tags=st.dictionaries(
        _TEXT.map(lambda t: t[:MAX_TAG_KEY]), _TEXT.map(lambda t: t[:MAX_TAG_VALUE]), max_size=4
    )
    | st.just({"k" * MAX_TAG_KEY: "v" * MAX_TAG_VALUE})
)
@example(tags={CLIENT_SPAN_TAG: "0"})  # ci110
def test_every_tag_reaches_langfuse_within_its_200_characters(tags: dict[str, str]) -> None:
    """Langfuse drops a tag past 200 characters, without a word; a span's tag may be a
    64-character key and a 256-character value, so its ``key:value`` is cut to 200 instead."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    observer = TelemetryObserver(provider.get_tracer("t"), None)
    span = make_storable(make_span(tenant="acme", department="sales", tags=tags))
    observer.on_start(span)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    assert otel.attributes is not None
    sent = list(otel.attributes[sc.LANGFUSE_TAGS])  # type: ignore[arg-type]
    # The gateway's note of a client's span (CLIENT_SPAN_TAG) is its own, not a tag for Langfuse.
    mine = sorted((k, v) for k, v in span.tags.items() if k != CLIENT_SPAN_TAG)
    whole = ["tenant:acme", "department:sales", *(f"{k}:{v}" for k, v in mine)]
    assert sent == [
        tag if len(tag) <= LANGFUSE_MAX_TAG else tag[: LANGFUSE_MAX_TAG - 1] + "…" for tag in whole
    ]
    assert all(len(tag) <= LANGFUSE_MAX_TAG for tag in sent)


def test_langfuse_gets_a_cost_only_in_usd(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Langfuse reads ``cost_details`` as USD and has no currency field: a EUR span's cost
    there was summed with the USD ones as dollars. Only a priced USD span carries it; every
    span keeps its cost in its own currency in ``ometer.cost`` and ``ometer.currency``."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
        monkeypatch.setenv("LANGFUSE_HOST", rx.url)
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}", department="sales")
        ledger = client.meter.ledger
        ledger.add_price_rule(
            PriceRule(pattern="llama3.1:*", currency="EUR", per_request=Decimal(2))
        )
        ledger.add_price_rule(PriceRule(pattern="nomic-*", currency="USD", per_request=Decimal(3)))
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hello"}])
        client.embed(model="nomic-embed-text", input="x")
        client.chat(model="qwen2.5:7b", messages=[{"role": "user", "content": "hi"}])
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) >= 3 else None, what="three spans")
        telemetry.shutdown()
    by_model = {v.attributes[sc.GEN_AI_REQUEST_MODEL]: v.attributes for v in views}
    eur, usd = by_model["llama3.1:8b"], by_model["nomic-embed-text"]
    unpriced = by_model["qwen2.5:7b"]
    assert (eur[sc.OMETER_CURRENCY], usd[sc.OMETER_CURRENCY]) == ("EUR", "USD")
    assert eur[sc.OMETER_COST] == "2.000000" and sc.LANGFUSE_COST not in eur
    assert usd[sc.OMETER_COST] == "3.000000" and json.loads(usd[sc.LANGFUSE_COST]) == {"total": 3.0}
    # Unpriced: a 0 would read as "free" and hide the cost Langfuse infers from its model list.
    assert unpriced[sc.OMETER_UNPRICED] is True and sc.LANGFUSE_COST not in unpriced


@settings(max_examples=50, deadline=None)
@given(
    started=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    ttft_ns=st.none() | st.integers(0, 10**12),
)
def test_langfuse_gets_the_time_of_the_first_token(started: datetime, ttft_ns: int | None) -> None:
    """Langfuse's time to first token is its ``completion_start_time``, an ISO time it reads
    from ``langfuse.observation.completion_start_time``: ometer measured the TTFT and sent it
    in no attribute Langfuse reads, so every generation showed none."""
    otel = observed(make_span(started_at=started, ttft_ns=ttft_ns))
    assert otel.attributes is not None
    sent = otel.attributes.get(sc.LANGFUSE_COMPLETION_START)
    if ttft_ns is None:
        assert sent is None
        return
    assert isinstance(sent, str) and sent.endswith("Z")
    first = datetime.fromisoformat(sent)
    assert first == started + timedelta(microseconds=ttft_ns // 1000)


@settings(max_examples=100, deadline=None)
@given(micros=st.integers(0, 2**63 - 1) | st.sampled_from([1, 10**15 + 1, 2**53 + 1, 2**63 - 1]))
def test_langfuse_gets_the_cost_to_the_micro_unit(micros: int) -> None:
    """``cost_details`` is JSON text: its number is written as the exact decimal, not through
    a float, which rounds a cost past 2**53 micro-units (9,007,199,254.740993 dollars became
    9,007,199,254.740992)."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    observer = TelemetryObserver(provider.get_tracer("t"), None)
    span = make_storable(make_span(cost_total=micros, cost_tokens=micros, unpriced=False))
    observer.on_start(span)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    assert otel.attributes is not None
    sent = otel.attributes[sc.LANGFUSE_COST]
    assert isinstance(sent, str)
    assert json.loads(sent, parse_float=Decimal) == {"total": Decimal(micros).scaleb(-6)}


@settings(max_examples=40, deadline=None)
@given(operation=st.sampled_from(sorted(sc.OPERATION_NAMES)), status=st.sampled_from(list(Status)))
def test_a_call_a_gateway_recorded_is_no_second_generation_in_langfuse(
    operation: str, status: Status
) -> None:
    """A client's span of a call a gateway recorded ends with no usage or cost (the gateway's
    span has them). Langfuse types a span by ``langfuse.observation.type``, else by its
    ``gen_ai.operation.name`` or model: it took this one as a second generation (or embedding)
    of the call, of no tokens, beside the gateway's, in every count of generations by model."""
    span = make_span(operation=operation, status=status)
    mine = dict(observed(span, elsewhere=True).attributes or {})
    assert mine[sc.LANGFUSE_OBSERVATION_TYPE] == "span"
    assert mine[sc.OMETER_RECORDED_BY] == "gateway"
    assert not {sc.LANGFUSE_USAGE, sc.LANGFUSE_COST, sc.LANGFUSE_MODEL} & set(mine)
    ours = dict(observed(span).attributes or {})  # the call's own record: as before
    expected = "embedding" if sc.input_only(operation) else "generation"
    assert ours[sc.LANGFUSE_OBSERVATION_TYPE] == expected
