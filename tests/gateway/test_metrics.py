"""``/metrics`` stays bounded whatever names callers send, and never loses a call."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ollama
import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ollama_meter.gateway._metrics import OTHER, GatewayMetrics
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import SpanRecord, Status, counted_model, make_storable
from ollama_meter.telemetry._semconv import OPERATION_EMBEDDINGS, OPERATION_NAMES
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])


def samples(metrics: GatewayMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    (family,) = (f for f in text_string_to_metric_families(metrics.text()) if f.name == name)
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


@settings(max_examples=60, deadline=None)
@given(
    calls=st.lists(st.tuples(NAMES, NAMES, NAMES), min_size=1, max_size=40),
    limit=st.integers(1, 6),
)
def test_callers_cannot_mint_series_past_the_limit_and_every_call_is_counted(
    calls: list[tuple[str, str, str]], limit: int
) -> None:
    metrics = GatewayMetrics(max_series=limit)
    for tenant, department, model in calls:
        metrics.on_end(make_span(tenant=tenant, department=department, request_model=model))
    requests = samples(metrics, "ometer_requests")
    assert sum(requests.values()) == len(calls)
    named = [(tenant, department, counted_model(model)) for tenant, department, model in calls]
    first = list(dict.fromkeys(named))[:limit]  # the label sets seen first keep their own series
    expected = Counter(call if call in first else (OTHER,) * 3 for call in named)
    assert {
        (labels["tenant"], labels["department"], labels["model"]): value
        for labels, value in ((dict(k), v) for k, v in requests.items())
    } == expected
    assert len(samples(metrics, "ometer_tokens")) <= 2 * (limit + 1)


@settings(max_examples=200, deadline=None)
@given(model=st.text(min_size=1), error_type=st.text(max_size=40))
def test_any_name_is_one_escaped_label_value_and_the_scrape_parses(
    model: str, error_type: str
) -> None:
    """Quotes, backslashes, newlines, control characters, surrogates: one sample, its own line."""
    span = make_storable(
        make_span(
            request_model=model,
            response_model=model,  # a server answered for it: its own series
            status=Status.ERROR,
            error_type=error_type or None,
        )
    )
    metrics = GatewayMetrics()
    metrics.on_end(span)
    text = metrics.text()
    lines = [line for line in text.splitlines() if line.startswith("ometer_errors_total{")]
    assert len(lines) == 1  # nothing in a name starts a line of its own
    ((labels, value),) = samples(metrics, "ometer_errors").items()
    assert dict(labels)["model"] == counted_model(span.request_model) and value == 1
    assert dict(labels)["error_type"] == (span.error_type or "unknown")


def test_a_call_ended_on_an_event_loop_is_counted_after_its_answer_and_once() -> None:
    """Counting took 20 us of each answer: on an event loop a call is counted once the task
    that ended it lets go (its answer written by then); a scrape before that counts it too."""
    metrics = GatewayMetrics()

    def counted() -> float:
        return sum(
            sample.value
            for family in metrics.requests.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    async def answering() -> None:
        metrics.on_start(span := make_span())
        metrics.on_end(span)
        assert counted() == 0  # the answer's last write comes first
        await asyncio.sleep(0)
        assert counted() == 1
        metrics.on_end(make_span())
        assert sum(samples(metrics, "ometer_requests").values()) == 2  # scraped at once
        assert "ometer_requests_in_flight 0.0" in metrics.text()
        await asyncio.sleep(0)
        assert counted() == 2  # not twice

    async def on_another_loop() -> None:
        metrics.on_end(make_span())
        await asyncio.sleep(0)
        assert counted() == 3

    asyncio.run(answering())
    asyncio.run(on_another_loop())


@pytest.fixture
def locked_app(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    return app_on(emulator.url, sqlite_url, require_key=True, admin_token="s3cret")


def test_refusals_count_by_route_so_no_caller_mints_a_series(locked_app: Gateway) -> None:
    """``/v1/models/{model}`` takes any name: counted by the path sent, each refused request
    without a key was a new series in every scrape (and a new entry in the gateway's memory)."""
    gw = locked_app
    for n in range(50):
        assert gw.client.get(f"/v1/models/made-up-{n}").status_code == 401
    assert gw.client.post("/api/chat", json={}).status_code == 401
    text = gw.client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    refused = {
        sample.labels["route"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ometer_gateway_unauthenticated_requests"
        for sample in family.samples
    }
    assert refused == {"/v1/models/{model:path}": 50.0, "/api/chat": 1.0}


def test_a_scrape_is_not_kept_by_caches_in_between(locked_app: Gateway) -> None:
    response = locked_app.client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_the_series_limit_holds_when_threads_observe_at_once() -> None:
    """Spans are observed from the gateway's threads: the limit is a count under a lock, so
    threads racing past it cannot each add their own label set."""
    limit, threads = 5, 8
    metrics = GatewayMetrics(max_series=limit)
    start = threading.Barrier(threads)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def observe(worker: int) -> None:
        start.wait()
        for n in range(50):
            metrics.on_end(make_span(tenant=f"t{worker}", department=f"d{n}"))

    try:
        pool = [threading.Thread(target=observe, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    requests = samples(metrics, "ometer_requests")
    assert sum(requests.values()) == threads * 50
    assert len(requests) == limit + 1  # five of their own, and everyone else's together


@pytest.mark.parametrize("exists", [True, False])
def test_counts_are_this_gateways_own_whatever_prometheus_multiproc_dir_says(
    tmp_path: Path, exists: bool
) -> None:
    """prometheus_client chooses, once at import, to keep every value in files of
    ``PROMETHEUS_MULTIPROC_DIR`` when that is set (its mode for a pre-fork server's workers):
    ``ometer serve`` with it pointing nowhere failed to start with a traceback, and with a
    directory a second gateway in the process started from the first one's counts (files are
    per process id, so a container's pid 1 would start from the last run's). A process: the
    choice is made at import."""
    folder = tmp_path / "multiproc"
    if exists:
        folder.mkdir()
    script = textwrap.dedent(
        """
        from ollama_meter.gateway._metrics import GatewayMetrics
        from tests.factories import make_span

        first, second = GatewayMetrics(), GatewayMetrics()
        first.on_end(make_span())
        second.on_end(make_span())
        print([l for l in second.text().splitlines() if l.startswith("ometer_requests_total")])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        cwd=Path(__file__).parents[2],  # where ``tests`` imports from
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    labels = 'department="sales",model="llama3.1:8b",status="ok",tenant="acme"'
    assert done.stdout.strip() == repr([f"ometer_requests_total{{{labels}}} 1.0"])
    assert not exists or list(folder.iterdir()) == []


def test_names_no_server_answered_for_share_one_series_and_leave_room_for_real_models() -> None:
    """Where keys decide the tenant and department, the model is the label a caller still
    names: a key whose calls were refused (its budget spent) or answered "model not found"
    sent a made-up name each call, and the first thousand took every series, so a model
    pulled afterwards was counted as ``_other``. A model gets its own series once a server
    answered a call to it; until then its calls are counted, as ``_other``."""
    metrics = GatewayMetrics(max_series=50)

    def timed(**fields: Any) -> SpanRecord:
        return make_span(latency_ns=1_000_000, **fields)  # each in the duration histogram too

    metrics.on_end(timed(request_model="llama3.1:8b", response_model="llama3.1:8b"))
    for n in range(2_000):
        metrics.on_end(
            timed(
                request_model=f"made-up-{n}",
                status=Status.ERROR,
                error_type="model_not_found",
            )
        )
        metrics.on_end(timed(request_model=f"refused-{n}", status=Status.REJECTED))
    metrics.on_end(timed(request_model="qwen2.5:7b", response_model="qwen2.5:7b"))
    timeout = timed(request_model="llama3.1:8b", status=Status.ERROR, error_type="timeout")
    metrics.on_end(timeout)  # no answer, but to a model served before: its own
    requests = samples(metrics, "ometer_requests")
    assert sum(requests.values()) == 4_003
    by_model = Counter[str]()
    for labels, value in requests.items():
        by_model[dict(labels)["model"]] += int(value)
    assert by_model == {"llama3.1:8b": 2, "qwen2.5:7b": 1, OTHER: 4_000}
    (family,) = (
        f
        for f in text_string_to_metric_families(metrics.text())
        if f.name == "gen_ai_client_operation_duration_seconds"
    )
    assert {s.labels["gen_ai_request_model"] for s in family.samples} == {
        "llama3.1:8b",
        "qwen2.5:7b",
        OTHER,
    }


def test_a_keys_made_up_models_through_the_official_client_take_no_series_of_their_own(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """On the wire, keys required: each made-up name is Ollama's 404 to the client and a span
    in the ledger under its own name, and one ``_other`` series in the scrape."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    gw = serve_on(emulator.url, sqlite_url, require_key=True, admin_token="s3cret")
    client = ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {secret}"})
    for n in range(30):
        with pytest.raises(ollama.ResponseError) as raised:
            client.chat(model=f"made-up-{n}", messages=[{"role": "user", "content": "hi"}])
        assert raised.value.status_code == 404
    client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
    text = gw.client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    requests = {
        (s.labels["model"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ometer_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert requests == {(OTHER, "error"): 30.0, ("llama3.1:8b", "ok"): 1.0}
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 100)
    assert sorted(s.request_model for s in spans if s.status == "error") == sorted(
        f"made-up-{n}" for n in range(30)
    )


@settings(max_examples=30, deadline=None)
@given(
    spellings=st.lists(
        st.sampled_from(
            ["llama3.1:8b", "LLAMA3.1:8B", "llama3.1:8b ", "registry.ollama.ai/library/llama3.1:8b"]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_models_spellings_are_one_model_series(spellings: list[str]) -> None:
    """Ollama runs every spelling below as llama3.1:8b and echoes the caller's: the model series
    split one model's calls, tokens and cost as reports did (they count it under one name)."""
    metrics = GatewayMetrics(max_series=50)
    for name in spellings:
        metrics.on_end(make_span(request_model=name, response_model=name, input_tokens=3))
    assert samples(metrics, "ometer_requests") == {
        (("department", "sales"), ("model", "llama3.1:8b"), ("status", "ok"), ("tenant", "acme")):
        len(spellings)
    }  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(operation=st.sampled_from(sorted(OPERATION_NAMES)), tokens=st.integers(0, 10**6))
def test_an_embedding_counts_input_tokens_only_in_the_genai_histogram(
    operation: str, tokens: int
) -> None:
    """The GenAI conventions give an embedding input tokens only: ``/metrics`` observed an
    output point of 0 tokens for every embedding call (a series of zeros in each embedding
    model's lowest bucket), as the OTLP export did before it was fixed."""
    metrics = GatewayMetrics(max_series=50)
    metrics.on_end(make_span(operation=operation, input_tokens=tokens, output_tokens=tokens))
    (family,) = (
        f
        for f in text_string_to_metric_families(metrics.text())
        if f.name == "gen_ai_client_token_usage"
    )
    kinds = {s.labels["gen_ai_token_type"] for s in family.samples if s.name.endswith("_count")}
    embedding = OPERATION_NAMES[operation] == OPERATION_EMBEDDINGS
    assert kinds == ({"input"} if embedding else {"input", "output"})


@settings(max_examples=30, deadline=None)
@given(
    operation=st.sampled_from(sorted(OPERATION_NAMES)),
    error=st.sampled_from([None, "timeout", "model_not_found"]),
)
def test_the_genai_histograms_carry_the_attributes_the_conventions_require(
    operation: str, error: str | None
) -> None:
    """The GenAI conventions require ``gen_ai.operation.name`` and ``gen_ai.provider.name`` on
    each of their client metrics (``error.type`` on a failed call's duration): ``/metrics``
    named no provider, so a dashboard built on the conventions (by ``gen_ai_provider_name``, as
    an OTel collector's Prometheus export of the OTLP metrics names it) found none of its series."""
    metrics = GatewayMetrics(max_series=50)
    status = Status.ERROR if error else Status.OK
    span = make_span(operation=operation, status=status, error_type=error, stream=True)
    span.ttft_ns, span.latency_ns = 10**6, 2 * 10**6
    metrics.on_end(span)
    families = {f.name: f for f in text_string_to_metric_families(metrics.text())}
    names = ["gen_ai_client_operation_duration_seconds"]
    names += ["gen_ai_client_operation_time_to_first_chunk_seconds"]
    names += [] if error else ["gen_ai_client_token_usage"]
    for name in names:
        labels = [s.labels for s in families[name].samples if s.name.endswith("_count")]
        assert labels, name
        for each in labels:
            assert each["gen_ai_provider_name"] == "ollama", name
            assert each["gen_ai_operation_name"] == OPERATION_NAMES[operation], name
            assert each.get("error_type", "") == (error or ""), name
