"""An upstream that lies about its figures or its pace, on Ollama's native routes.

Ollama times its own work (``total_duration``, ``load_duration``, ``prompt_eval_duration``,
``eval_duration``) between reading the request and writing the answer's end, so no honest
figure is longer than the call the meter timed around it. A server that says otherwise is
not believed past that, and a GPU-hour price never charges more than the call could have run.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.records import MAX_DURATION_NS
from tests._raw_http import RawServer, dripping
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

models = itertools.count()  # each example its own model: no circuit opens across examples
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
BODIES = {
    "/api/chat": {"messages": [{"role": "user", "content": "hello there"}]},
    "/api/generate": {"prompt": "hello there"},
    "/api/embed": {"input": "hello there"},
}


def final(path: str, figures: dict[str, object]) -> dict[str, Any]:
    """Ollama's last object on ``path`` (a whole answer's only one), with ``figures``."""
    if path == "/api/embed":
        return {"model": "m", "embeddings": [[0.5, 0.5]], "prompt_eval_count": 3, **figures}
    said = {"message": {"role": "assistant", "content": "hi"}} if path == "/api/chat" else {}
    said = said or {"response": "hi"}
    ends = {"done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 1}
    return {"model": "m", **said, **ends, **figures}


@pytest.fixture
def upstream(app_on: Callable[..., Gateway], sqlite_url: str) -> Iterator[tuple[Gateway, Any]]:
    """An in-process gateway before an upstream whose answer each example scripts; calls are
    priced by the token and by the GPU-hour (so a lie about time would cost)."""
    server = RawServer(lambda: server.body)  # type: ignore[attr-defined]
    try:
        gw = app_on(server.url, sqlite_url)
        gw.ledger.add_price_rule(token_prices(gpu_hour=Decimal(2), charge_load=True))
        yield gw, server
    finally:
        server.close()


def answer(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


figures = st.one_of(
    st.integers(0, 10**9),
    st.sampled_from([10**15, 10**18, 2**63, 2**70, -1, -(10**12), 1.5e12, "9", None, True]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(sorted(BODIES)),
    stream=st.booleans(),
    said=st.dictionaries(st.sampled_from(DURATIONS), figures),
)
@example(path="/api/chat", stream=False, said=dict.fromkeys(DURATIONS, 10**15))
@example(path="/api/generate", stream=True, said={"eval_duration": 10**18})
@example(path="/api/embed", stream=False, said={"load_duration": 2**70})
def test_no_time_ollama_reports_is_longer_than_the_call_the_meter_timed(
    upstream: tuple[Gateway, Any], path: str, stream: bool, said: dict[str, object]
) -> None:
    """A 10 ms call reported as 10^15 ns (11.6 days) at Ollama was charged 11.6 days of GPU
    time for each of prompt and reply (1,111 USD at 2 USD an hour): each figure, and the
    busy time priced, is now at most the call's own latency."""
    gw, server = upstream
    stream = stream and path != "/api/embed"
    obj = final(path, said)
    server.body = answer(json.dumps(obj).encode() + (b"\n" if stream else b""))
    body = {"model": f"m{next(models)}", **BODIES[path]}
    if path != "/api/embed":
        body["stream"] = stream
    reply = gw.client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert span.status == "ok"
    kept = [getattr(span, f"{name}_ns") for name in DURATIONS]
    assert all(0 <= figure <= span.latency_ns for figure in kept if figure is not None), kept
    busy = sum(figure or 0 for figure in kept[1:])  # load, prompt and reply: what is priced
    assert busy <= span.latency_ns < MAX_DURATION_NS
    # The GPU time is priced on at most the call's latency (rounded up, to the micro-unit).
    most = span.input_tokens * 1000 + span.output_tokens * 2000 + span.latency_ns * 2 // 3600 + 1
    assert span.cost_total <= most


def test_figures_cut_to_the_latency_keep_the_load_first_and_say_so_once(
    upstream: tuple[Gateway, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Ollama loads, then evaluates the prompt, then generates: time runs out in that order.
    One WARNING for the call names each figure cut, what was reported and what was kept."""
    gw, server = upstream
    said = {"load_duration": 1_000, "prompt_eval_duration": 10**15, "eval_duration": 10**12}
    server.body = answer(json.dumps(final("/api/chat", said)).encode())
    body = {"model": f"m{next(models)}", "stream": False, **BODIES["/api/chat"]}
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        assert gw.client.post("/api/chat", json=body).status_code == 200
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert span.load_duration_ns == 1_000  # within the latency: kept whole
    assert span.prompt_eval_duration_ns == span.latency_ns - 1_000  # the rest of the call
    assert span.eval_duration_ns == 0 and span.total_duration_ns is None
    (warning,) = [r for r in caplog.records if "longer at Ollama" in r.getMessage()]
    text = warning.getMessage()
    assert "prompt_eval_duration 1,000,000,000,000,000 ns (kept " in text
    assert "eval_duration 1,000,000,000,000 ns (kept 0)" in text
    assert "load_duration" not in text and span.id in text


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("drop", [b" ", b"\n"])
def test_an_upstream_dripping_bytes_that_make_no_item_runs_out_of_time(
    serve_on: Callable[..., Gateway], sqlite_url: str, path: str, stream: bool, drop: bytes
) -> None:
    """A byte a second kept aiohttp's read timeout (a wait for each read) from ever running
    out: the call, its slot and its caller waited for as long as the server dripped (a
    stream's blank lines likewise). An item that does not arrive whole within
    OMETER_UPSTREAM_TIMEOUT is the server's silence: a timeout, 504 or the stream's last
    item, and a timeout span, while the server would still drip for seconds."""
    server = dripping(drop, lambda path: json.dumps(final(path, {})).encode() + b"\n")
    try:
        gw = serve_on(
            f"http://127.0.0.1:{server.server_address[1]}",
            sqlite_url,
            config={"upstream_timeout": 1, "retries": 0},
        )
        body = {"model": "m", "stream": stream, **BODIES[path]}
        reply = gw.client.post(path, json=body)
        last = json.loads(reply.text.splitlines()[-1])
        assert "error" in last and "done" not in last, reply.text
        assert reply.status_code == (200 if stream else 504)
        (span,) = gw.ledger.latest(SpanFilter(), 1)
        assert (span.status, span.error_type) == ("error", "timeout")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", sorted(BODIES))
def test_a_load_ollama_reported_is_not_timed_again_as_work(
    upstream: tuple[Gateway, Any], path: str
) -> None:
    """/api/embed reports how long Ollama loaded the model and no other time, so the meter
    times the rest itself: it timed the whole call, load included, and the load was priced a
    second time on top (a cold 5 s load charged 10 s of GPU time). An honest answer here: a
    0.3 s call that says it spent 0.2 s of it loading."""
    gw, server = upstream
    said = final(path, {"load_duration": 200_000_000, "total_duration": 250_000_000})
    body = json.dumps(said).encode()
    server.answer = lambda: (time.sleep(0.3), answer(body))[1]
    request = {"model": f"m{next(models)}", **BODIES[path]}
    if path != "/api/embed":
        request["stream"] = False
    assert gw.client.post(path, json=request).status_code == 200
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert span.load_duration_ns == 200_000_000
    busy = span.load_duration_ns + span.prompt_eval_duration_ns + span.eval_duration_ns
    assert busy == span.latency_ns - (span.queue_ns or 0)
