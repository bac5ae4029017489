"""An ometer client calling through an ometer gateway on the same ledger: one call, one span.

The gateway always records what passes through it (a caller's word never spares it a span);
the client, told by the answer that the gateway recorded the call in the client's own ledger,
leaves the record to it: no second span, no second charge to a budget, none in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.budgets import Budget, budget_status
from ollama_meter.errors import ModelNotFound
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import utc_now
from ollama_meter.pricing import from_micros
from ollama_meter.testing import OllamaEmulator
from tests._raw_http import answering
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, left_mid_stream
from tests.gateway.test_processes import OMETER, logged

HI = [{"role": "user", "content": "hi"}]
LEDGER_HEADER = "X-Ometer-Ledger"


def _call(client: MeteredClient, operation: str, stream: bool) -> Any:
    if operation == "chat":
        answer = client.chat("llama3.1:8b", HI, stream=stream)
    else:
        answer = client.generate("llama3.1:8b", "hi", stream=stream)
    return list(answer)[-1] if stream else answer


async def _acall(client: AsyncMeteredClient, operation: str, stream: bool) -> Any:
    if operation == "chat":
        answer = await client.chat("llama3.1:8b", HI, stream=stream)
    else:
        answer = await client.generate("llama3.1:8b", "hi", stream=stream)
    if not stream:
        return answer
    return [part async for part in answer][-1]


@pytest.mark.parametrize("operation", ["chat", "generate"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_client_through_a_gateway_on_its_ledger_leaves_one_span(
    emulator: OllamaEmulator,
    sqlite_url: str,
    serve_on: Callable[..., Gateway],
    operation: str,
    stream: bool,
    driver: str,
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    tags = {"job": "nightly", "note": "été \U0001f319"}
    who = {"tenant": "acme", "department": "sales", "user": "ann", "tags": tags}
    who["db_url"] = sqlite_url
    if driver == "sync":
        with MeteredClient(gw.url, **who) as client:
            last = _call(client, operation, stream)
    else:

        async def go() -> Any:
            async with AsyncMeteredClient(gw.url, **who) as client:
                return await _acall(client, operation, stream)

        last = asyncio.run(go())
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.tenant, s.department, s.user) for s in spans] == [
        ("gateway", "acme", "sales", "ann")
    ]
    (span,) = spans
    assert span.cost_total > 0 and span.status == "ok"
    # The client's tags, with the gateway's word that no key vouches for its user, and its
    # note of the client's own span of the call (another id: the client's journal named it).
    client_span = span.tags.pop("ometer.client_span")
    assert span.tags == {**tags, "user_verified": "false"}
    assert len(client_span) == 26 and client_span != span.id
    # The client names the gateway's span: the call's one record.
    assert last.meter.id == span.id
    assert last.meter.recorded_by == gw.url
    assert last.meter.cost == from_micros(span.cost_total)


def test_a_gateway_names_its_ledger_on_every_metered_answer(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    answers = [
        gw.client.post("/api/chat", json={"model": "llama3.1:8b", "messages": HI, "stream": False}),
        gw.client.post("/api/generate", json={"model": "llama3.1:8b", "prompt": "hi"}),
        gw.client.post(
            "/v1/chat/completions", json={"model": "llama3.1:8b", "messages": HI, "stream": True}
        ),
        gw.client.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "hi"}),
    ]
    names = {answer.headers.get(LEDGER_HEADER) for answer in answers}
    assert [answer.status_code for answer in answers] == [200] * 4
    (name,) = names
    assert name and len(name) >= 32  # unguessable
    assert gw.ledger.identity() == name
    # Another ledger has another name.
    assert httpx.get(f"{gw.url}/api/tags").headers.get(LEDGER_HEADER) is None


def test_a_client_on_another_ledger_records_its_own_span_beside_the_gateways(
    emulator: OllamaEmulator, sqlite_url: str, tmp_path: Path, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    own = f"sqlite:///{tmp_path / 'own.db'}"
    with MeteredClient(gw.url, department="sales", db_url=own) as client:
        last = client.chat("llama3.1:8b", HI)
        mine = client.meter.ledger.latest(SpanFilter(), 10)
    gw.settle()
    theirs = gw.ledger.latest(SpanFilter(), 10)
    assert [(s.source, s.department) for s in mine] == [("sdk", "sales")]
    assert [(s.source, s.department) for s in theirs] == [("gateway", "sales")]
    assert last.meter.id == mine[0].id and last.meter.recorded_by is None


def test_one_call_is_charged_once_to_its_budget_and_leaves_nothing_open(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """The client's hold on the budget is given back (the gateway's gate held the call), and
    its journal entry closed: no later process records the call as interrupted."""
    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1_000_000, currency="USD")
    )
    with MeteredClient(gw.url, tenant="acme", department="sales", db_url=sqlite_url) as client:
        assert client.meter.budgets is not None
        last = client.chat("llama3.1:8b", HI, options={"num_predict": 8})
        client.meter.budgets.close()
    gw.settle()
    assert not gw.ledger.journal._open  # the client's call closed with no span of its own
    assert gw.meter.budgets is not None
    gw.meter.budgets.close()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    (status,) = budget_status(gw.ledger, tz=ZoneInfo("UTC"), now=utc_now())
    assert (status.spent, status.held) == (span.cost_total, 0)
    assert last.meter.id == span.id
    assert gw.meter.recover_interrupted() == 0


def test_a_failure_the_gateway_recorded_is_its_one_span(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    with MeteredClient(gw.url, department="sales", db_url=sqlite_url) as client:
        with pytest.raises(ModelNotFound):
            client.chat("no-such-model:1b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.source, span.department, span.error_type) == (
        "gateway",
        "sales",
        "model_not_found",
    )


def _chat_answer(emulator: OllamaEmulator) -> bytes:
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    return httpx.post(f"{emulator.url}/api/chat", json=body, timeout=30).content


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), span_id=_HEADER_TEXT)
def test_an_answer_naming_any_other_ledger_changes_nothing(
    emulator: OllamaEmulator, sqlite_url: str, data: st.DataObject, span_id: str
) -> None:
    """An upstream that says anything in X-Ometer-Ledger but this ledger's id (a plain
    Ollama says nothing, a hostile one a guess, one close to it) spares the client nothing:
    it records the call, once, under its own id."""
    with answering() as server, MeteredClient(server_url(server), db_url=sqlite_url) as client:
        ours = client.meter.ledger.identity()
        assert ours is not None
        near = st.sampled_from([ours.upper(), f" {ours}", ours[:-1], f"{ours}0", f"{ours},{ours}"])
        said = data.draw(st.one_of(st.none(), _HEADER_TEXT, near))
        assume(said is None or said.strip() != ours)
        headers = {"content-type": "application/json", "X-Ometer-Span-Id": span_id or "x"}
        if said is not None:
            headers[LEDGER_HEADER] = said
        server.answer = (200, headers, _chat_answer(emulator))
        before = client.meter.ledger.count()
        last = client.chat("llama3.1:8b", HI)
        assert client.meter.ledger.count() == before + 1
        (span,) = client.meter.ledger.latest(SpanFilter(), 1)
        assert (span.id, span.source, last.meter.recorded_by) == (last.meter.id, "sdk", None)


def test_an_answer_naming_this_ledger_can_only_spare_the_client_its_copy(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Who knows the ledger's id (not secret, but random: 128 bits) can make an answer say a
    gateway recorded the call; the client then writes no span of it. Nothing else: no
    other span is touched, no budget is credited, and a gateway never skips its own."""
    with answering() as server, MeteredClient(server_url(server), db_url=sqlite_url) as client:
        ours = client.meter.ledger.identity()
        assert ours is not None and len(ours) == 32
        headers = {
            LEDGER_HEADER: ours,
            "X-Ometer-Span-Id": "01JFAKE",
            "content-type": "application/json",
        }
        server.answer = (200, headers, _chat_answer(emulator))
        last = client.chat("llama3.1:8b", HI)
        assert client.meter.ledger.count() == 0
        assert (last.meter.id, last.meter.recorded_by) == ("01JFAKE", server_url(server))


def server_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_ometer_chat_inside_ometer_run_is_one_span_charged_as_it_says(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """``ometer run --dept finance -- prog``, where prog runs ``ometer chat`` on the same
    ledger: each call is the gateway's one span, charged to finance unless the chat names
    another department; the chat says where the record is."""
    env = {
        **os.environ,
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    chat = [*OMETER, "chat", "-m", "llama3.1:8b", "--no-stream"]
    script = (
        "import subprocess, sys\n"
        f"subprocess.run({[*chat, 'first']!r}, check=True)\n"
        f"subprocess.run({[*chat, '--dept', 'sales', 'second']!r}, check=True)\n"
    )
    done = subprocess.run(
        [*OMETER, "run", "--dept", "finance", "--", sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spans = logged(env)
    assert [(s["source"], s["department"]) for s in spans] == [
        ("gateway", "sales"),
        ("gateway", "finance"),
    ]
    said = re.findall(
        r"recorded by the gateway at http://127\.0\.0\.1:\d+ as span (\w+)", done.stderr
    )
    assert said == [spans[1]["id"], spans[0]["id"]]
    assert "ometer: 2 call(s) metered for default/finance" in done.stderr


def test_ometer_chat_json_names_the_gateways_span(  # type: ignore[no-untyped-def]
    cli, emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], monkeypatch
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    monkeypatch.setenv("OLLAMA_HOST", gw.url)
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    result = cli("chat", "--json", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert result.code == 0, result.stderr
    said = json.loads(result.stdout)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (said["span_id"], said["recorded_by"]) == (span.id, gw.url)
    assert (span.source, span.department) == ("gateway", "sales")


def test_telemetry_and_hooks_of_a_call_the_gateway_recorded(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """The client's trace span ends naming the gateway's span, with no cost or tokens, and
    the client counts nothing in its metrics (the gateway exports those); an on_end hook
    sees the call end, under the id of its record."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ollama_meter.telemetry._observer import TelemetryObserver

    gw = serve_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = TelemetryObserver(
        provider.get_tracer("t"), MeterProvider(metric_readers=[reader]).get_meter("t")
    )
    ended: list[str] = []
    with MeteredClient(
        gw.url, department="sales", db_url=sqlite_url, on_end=lambda s: ended.append(s.id)
    ) as client:
        client.meter.observers.append(observer)
        client.chat("llama3.1:8b", HI)
        for _ in client.chat("llama3.1:8b", HI, stream=True):
            pass
    gw.settle()
    ids = [s.id for s in reversed(gw.ledger.latest(SpanFilter(), 10))]
    assert len(ids) == 2 and ended == ids
    exported = exporter.get_finished_spans()
    assert [otel.attributes["ometer.span.id"] for otel in exported] == ids
    for otel in exported:
        assert otel.attributes["ometer.recorded_by"] == "gateway"
        assert not any(key.startswith(("ometer.cost", "gen_ai.usage")) for key in otel.attributes)
    assert reader.get_metrics_data() is None or not any(
        point
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    )


def test_a_stream_the_client_leaves_is_the_gateways_one_abort(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    gw = serve_on(emulator.url, sqlite_url)
    emulator.token_latency = 0.05  # Ollama is still answering when the caller has gone
    try:
        with MeteredClient(gw.url, department="sales", db_url=sqlite_url) as client:
            parts = client.chat("llama3.1:8b", HI, stream=True, options={"num_predict": 200})
            next(parts)
            parts.close()
            span = left_mid_stream(gw, emulator)
    finally:
        emulator.token_latency = 0.0
    assert (span.source, span.department) == ("gateway", "sales")


def test_calls_at_once_from_threads_and_tasks_are_each_charged_as_they_say(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """Each call's headers and answer are its own: four threads of one client and four tasks
    of another, each naming its own department, on SQLite and PostgreSQL."""
    gw = serve_on(emulator.url, db_url)
    departments = [f"d{n}" for n in range(8)]
    with MeteredClient(gw.url, db_url=db_url) as client:
        threads = [
            threading.Thread(
                target=client.chat, args=("llama3.1:8b", HI), kwargs={"department": department}
            )
            for department in departments[:4]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    async def tasks() -> list[Any]:
        async with AsyncMeteredClient(gw.url, db_url=db_url) as aclient:
            return await asyncio.gather(
                *(
                    _consumed(aclient.chat("llama3.1:8b", HI, stream=True, department=department))
                    for department in departments[4:]
                )
            )

    lasts = asyncio.run(tasks())
    gw.settle()
    spans = gw.ledger.latest(SpanFilter(), 20)
    assert sorted((s.source, s.department) for s in spans) == [("gateway", d) for d in departments]
    by_id = {s.id: s.department for s in spans}
    assert [by_id[last.meter.id] for last in lasts] == departments[4:]


async def _consumed(parts: Any) -> Any:
    return [part async for part in await parts][-1]


def test_a_client_that_names_no_department_leaves_the_gateways_default(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """The client's fallbacks (``default``, ``unassigned``) name nobody: the gateway charges
    its own default, as it charged any call that names none."""
    gw = serve_on(emulator.url, sqlite_url, config={"tenant": "acme", "department": "ops"})
    with MeteredClient(gw.url, db_url=sqlite_url, user="ann") as client:
        last = client.chat("llama3.1:8b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.tenant, span.department, span.user, span.id) == (
        "acme",
        "ops",
        "ann",
        last.meter.id,
    )
