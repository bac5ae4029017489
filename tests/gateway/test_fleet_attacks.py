"""A fleet under attack in process: servers that lie, limits that change, callers that leave.

The gateway runs in this process (Starlette's TestClient, lifespan included); the
servers are emulators, or a small server answering whatever a test tells it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from ollama_meter.budgets._estimate import Estimate
from ollama_meter.budgets._leases import Lease
from ollama_meter.budgets._refusals import mismatch, refusal
from ollama_meter.cli.serve import serve_settings
from ollama_meter.config import load_settings
from ollama_meter.gateway import GatewayOptions
from ollama_meter.gateway._app import Gateway
from ollama_meter.gateway._queue import Capacity, FairQueue
from ollama_meter.gateway._rates import OverLimit, RateLimits
from ollama_meter.gateway._rates_kept import keep_limits, read_limits
from ollama_meter.ledger import SpanFilter, open_ledger
from ollama_meter.periods import Window
from ollama_meter.records import Budget, Limit
from ollama_meter.testing import Fault, OllamaEmulator, unreachable_url
from tests._committed import committed
from tests.gateway.conftest import TestClient

LLAMA, QWEN = "llama3.1:8b", "qwen2.5:7b"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "tags",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than Python's parser goes
        b'{"models": [{"model": "' + b"\xff\xfe" + b'"}]}',  # not UTF-8
        b'{"models": [{"model": 7, "name": ["x"]}, {"model": {"a": 1}}, 5, null]}',
        b"null",
    ],
)
def test_a_server_that_answers_garbage_to_discovery_does_not_stop_the_gateway(
    tags: bytes,
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    bad = liar({"/api/tags": (200, tags), "/api/ps": (200, tags)})
    good = emulators(LLAMA)
    client = in_process(bad, good.url)
    reply = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": False})
    assert reply.status_code == 200, reply.text
    assert len(good.requests_to("/api/chat")) == 1
    health = client.get("/healthz").json()
    assert [s["state"] for s in health["servers"]][1] == "up"
    (span,) = committed(open_ledger(sqlite_url)).latest(SpanFilter(), 10)
    assert span.upstream_host == good.url


def test_a_model_gone_from_a_server_since_discovery_is_served_by_another_that_has_it(
    emulators: Callable[..., OllamaEmulator], in_process: Callable[..., TestClient]
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(one.url, two.url, discovery_interval=3600)
    one.models = ()  # `ollama rm` on the first server, after the gateway read its models
    for _ in range(3):
        reply = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": False})
        assert reply.status_code == 200, reply.text
    assert len(two.requests_to("/api/chat")) == 3
    assert len(one.requests_to("/api/chat")) == 1  # asked once: then it is known not to have it
    # A model that no server has any more is still Ollama's own 404.
    two.models = ()
    gone = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": False})
    assert gone.status_code == 404 and "not found" in gone.json()["error"]


@pytest.mark.parametrize("change", ["raised", "removed"])
def test_a_concurrency_limit_raised_or_removed_lets_waiting_calls_go_at_once(
    change: str, sqlite_url: str
) -> None:
    ledger = open_ledger(sqlite_url)
    ledger.set_limit(Limit("acme", "sales", concurrency=1))
    server = Capacity(None, "gpu")
    queue = FairQueue(max_queue=10)
    rates = RateLimits()

    async def run() -> None:
        rates.load(ledger.limits())
        first = rates.admit("acme", "sales")
        held = queue.grant_now(first.flow, lambda: server, caps=first.caps)
        assert held is not None
        second = rates.admit("acme", "sales")
        waiting = asyncio.ensure_future(
            queue.acquire(second.flow, lambda: server, caps=second.caps)
        )
        await asyncio.sleep(0)
        assert not waiting.done()  # the first call holds sales' one place
        if change == "raised":
            ledger.set_limit(Limit("acme", "sales", concurrency=2))
        else:
            ledger.remove_limit("acme", "sales", None)
        keeping = asyncio.ensure_future(keep_limits(ledger, rates, queue))
        try:
            # Within the read that brings the change, not when the first call ends.
            granted = await asyncio.wait_for(waiting, 5)
        finally:
            keeping.cancel()
        assert not held.released and server.in_use == 2
        granted.release()
        held.release()

    asyncio.run(run())


@pytest.mark.parametrize("before", [None, 3])
def test_a_concurrency_limit_set_or_lowered_counts_the_calls_already_running(
    before: int | None, sqlite_url: str
) -> None:
    ledger = open_ledger(sqlite_url)
    if before is not None:
        ledger.set_limit(Limit("acme", "sales", concurrency=before))
    server = Capacity(None, "gpu")
    queue = FairQueue(max_queue=10)
    rates = RateLimits()

    async def run() -> None:
        rates.load(ledger.limits())
        running = []
        for _ in range(2):  # two sales calls running when the limit changes
            admitted = rates.admit("acme", "sales")
            held = queue.grant_now(admitted.flow, lambda: server, caps=admitted.caps)
            assert held is not None
            running.append(held)
        ledger.set_limit(Limit("acme", "sales", concurrency=1))
        assert await read_limits(ledger, rates)
        queue.kick()
        third = rates.admit("acme", "sales")
        assert queue.grant_now(third.flow, lambda: server, caps=third.caps) is None
        waiting = asyncio.ensure_future(queue.acquire(third.flow, lambda: server, caps=third.caps))
        other = rates.admit("acme", "hr")  # another department is not held back
        elsewhere = queue.grant_now(other.flow, lambda: server, caps=other.caps)
        assert elsewhere is not None
        elsewhere.release()
        order = []
        for held in running:
            held.release()
            await asyncio.sleep(0)
            order.append((waiting.done(), server.in_use))
        # Two running against a limit of one: the third call goes when both have ended.
        assert order == [(False, 1), (True, 1)]
        waiting.result().release()
        assert server.in_use == 0

    asyncio.run(run())


@pytest.mark.parametrize("fault", [None, Fault.HTTP_500, Fault.MIDSTREAM_ERROR, Fault.DROP])
@pytest.mark.parametrize("stream", [False, True])
def test_a_call_that_ends_in_any_way_leaves_no_running_count_behind(
    fault: Fault | None,
    stream: bool,
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    # Every call counts in its tenant and department, limited or not; callers name
    # departments freely, so a count must go when its last call ends, however it ends.
    emu = emulators(LLAMA)
    # Ollama still answering when the count is read: the gateway reads a stream ahead of
    # its caller and gives the count back once Ollama's answer has ended (_ahead).
    emu.token_latency = 0.05 if stream else 0.0
    client = in_process(emu.url)
    gateway = client.app_state["gateway"]
    if fault is not None:
        emu.inject(fault, times=1)
    body = {"model": LLAMA, "messages": HI, "stream": stream}
    headers = {"X-Ometer-Department": "dept-nobody-limited"}
    with client.stream("POST", "/api/chat", json=body, headers=headers) as answer:
        running = gateway.rates.running()
        list(answer.iter_bytes())
    assert answer.status_code in (200, 500, 502)
    if stream and answer.status_code == 200:  # counted while its answer was being sent
        assert running == {
            ("tenant", "default"): 1,
            ("department", "default", "dept-nobody-limited"): 1,
        }
    assert gateway.rates.running() == {}
    assert [server.in_use for server in gateway.fleet.servers] == [0]


def test_the_union_lists_what_discovery_routes_to_models_named_only_by_name(
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    # An older Ollama (or a compatible server) names its models with "name" alone.
    old = {"models": [{"name": "mistral:7b", "size": 1}, {"name": LLAMA, "size": 2}]}
    body = json.dumps(old).encode()
    bad = liar({"/api/tags": (200, body), "/api/ps": (200, body)})
    good = emulators(LLAMA)
    client = in_process(good.url, bad)
    tags = client.get("/api/tags").json()["models"]
    assert [m.get("model") or m.get("name") for m in tags] == [LLAMA, "mistral:7b"]
    loaded = client.get("/api/ps").json()["models"]
    assert {m.get("model") or m.get("name") for m in loaded} >= {"mistral:7b"}


def test_an_open_circuits_retry_after_is_not_before_it_closes(
    in_process: Callable[..., TestClient],
) -> None:
    client = in_process(unreachable_url(), breaker_failures=1, breaker_reset=30, retries=0)
    opened = time.monotonic()  # the circuit opens after this, so closes after opened + 30
    call = {"model": LLAMA, "messages": HI, "stream": False}
    assert client.post("/api/chat", json=call).status_code == 502
    refused = client.post("/api/chat", json=call)
    still_open = 30 - (time.monotonic() - opened)
    assert refused.status_code == 503
    # Whole seconds, rounded up: a client that waits exactly that long finds it closed.
    assert int(refused.headers["retry-after"]) >= still_open


def test_calls_an_open_circuit_turns_away_do_not_use_up_the_rpm(
    in_process: Callable[..., TestClient], sqlite_url: str
) -> None:
    """An open circuit turns a call away before it reaches any server, as a budget or a full
    queue does: a client retrying through an outage used up its department's rpm on those
    refusals, and was refused 429 for up to a minute once the server was back."""
    open_ledger(sqlite_url).set_limit(Limit("default", "unassigned", rpm=2))
    client = in_process(unreachable_url(), breaker_failures=1, breaker_reset=30, retries=0)
    call = {"model": LLAMA, "messages": HI, "stream": False}
    assert client.post("/api/chat", json=call).status_code == 502  # reached for: counts
    for _ in range(5):
        refused = client.post("/api/chat", json=call)
        assert refused.status_code == 503, refused.text  # the circuit's, never the rpm's 429
        assert "not calling it until" in refused.text


@given(left_ms=st.integers(1, 3 * 86_400_000), held=st.booleans())
def test_a_budgets_retry_after_is_not_before_the_period_ends(left_ms: int, held: bool) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    end = now + timedelta(milliseconds=left_ms)
    budget = Budget("acme", "sales", "day", limit=1_000_000, currency="USD", id=1)
    window = Window(now - timedelta(days=1), end, "2026-03-01")
    lease = Lease(budget, "acme", window)
    refused = refusal(lease, 1_000_000, 1 if held else 0, 10, now, ZoneInfo("UTC"))
    wrong = mismatch(budget, "acme", window, Estimate(10, "EUR"), now)
    for error in (refused, wrong):
        assert isinstance(error.retry_after, int) and error.retry_after >= 1
    if not held:  # nothing in flight to wait for: come back when the period is over
        assert refused.retry_after * 1000 >= left_ms and wrong.retry_after * 1000 >= left_ms


def test_a_server_listing_megabytes_of_models_is_taken_out_not_parsed(
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    entry = {"model": "m:latest", "digest": "a" * 64, "details": {"family": "llama"}}
    models = [dict(entry, model=f"m{i}:latest") for i in range(70_000)]
    huge = json.dumps({"models": models}).encode()
    assert len(huge) > 8 * 1024 * 1024
    bad = liar({"/api/tags": (200, huge), "/api/ps": (200, b'{"models": []}')})
    good = emulators(LLAMA)
    client = in_process(good.url, bad)
    servers = client.get("/api/dash").json()["servers"]
    assert [s["state"] for s in servers] == ["up", "down"]
    assert "more than 8388608 bytes" in servers[1]["problem"]
    tags = client.get("/api/tags").json()["models"]
    assert [m["model"] for m in tags] == [LLAMA]


def test_a_models_open_circuit_holds_whatever_spelling_of_the_model_a_call_uses(
    emulators: Callable[..., OllamaEmulator], in_process: Callable[..., TestClient]
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(one.url, two.url, breaker_failures=1, retries=0, discovery_interval=3600)
    one.inject(Fault.HTTP_500, times=1)
    two.inject(Fault.HTTP_500, times=1)
    call = {"messages": HI, "stream": False}
    # Fails on the first server, moves, fails on the second: both circuits for the model open.
    assert client.post("/api/chat", json={**call, "model": "LLAMA3.1:8B"}).status_code == 500
    asked = len(one.requests_to("/api/chat")) + len(two.requests_to("/api/chat"))
    for spelling in ("llama3.1:8b", "registry.ollama.ai/library/llama3.1:8b"):
        refused = client.post("/api/chat", json={**call, "model": spelling})
        assert refused.status_code == 503, refused.text
        assert "failed 1 calls in a row" in refused.json()["error"]
    assert len(one.requests_to("/api/chat")) + len(two.requests_to("/api/chat")) == asked


def test_a_call_that_moves_counts_its_wait_for_the_next_server_as_queue_time(
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    # The second server answers at a token a minute: its slot is held until the test hurries it.
    one, two = emulators(LLAMA), emulators(LLAMA, QWEN, token_latency=60.0)
    client = in_process(f"{one.url}#slots=1", f"{two.url}#slots=1", discovery_interval=3600)
    one.inject(Fault.HTTP_503, times=1)
    answers: list[Any] = []

    def call(model: str) -> threading.Thread:
        body = {"model": model, "messages": HI, "stream": False}
        thread = threading.Thread(
            target=lambda: answers.append(client.post("/api/chat", json=body))
        )
        thread.start()
        return thread

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    long = call(QWEN)  # only the second server has qwen: it holds that server's one slot
    until(lambda: two.in_flight == 1)
    moved = call(LLAMA)  # the first server fails it at once; then it waits for the second's slot
    until(lambda: client.get("/api/dash").json()["queue"]["waiting"] == 1)
    time.sleep(0.3)  # it waits at least this long, however slow the machine
    two.hurry()
    for thread in (long, moved):
        thread.join(timeout=30)
    assert [a.status_code for a in answers] == [200, 200]
    spans = committed(open_ledger(sqlite_url)).latest(SpanFilter(), 10)
    (span,) = [s for s in spans if s.request_model == LLAMA]
    assert span.upstream_host == two.url and len(one.requests_to("/api/chat")) == 1
    assert span.queue_ns is not None and span.queue_ns >= 300_000_000, span.queue_ns


def test_limits_are_in_force_from_the_first_call_a_gateway_serves(
    emulators: Callable[..., OllamaEmulator], sqlite_url: str
) -> None:
    # A restarted gateway meets every client that retried while it was down, at once.
    open_ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1, concurrency=1))
    settings = load_settings(db_url=sqlite_url, ollama_host=emulators(LLAMA).url)

    async def first_calls() -> None:
        async with Gateway.running(settings, GatewayOptions()) as gateway:
            admitted = gateway.rates.admit("default", "sales")
            assert [cap.limit for cap in admitted.caps] == [None, 1]  # the tenant, sales
            with pytest.raises(OverLimit):
                gateway.rates.admit("default", "sales")

    asyncio.run(first_calls())


@pytest.mark.parametrize(
    ("flags", "served"),
    [
        (["http://gpu3:11434"], [("http://gpu3:11434", None)]),
        (["http://gpu3:11434#slots=2"], [("http://gpu3:11434", 2)]),
        (
            ["http://gpu3:11434", "http://gpu4:11434"],
            [("http://gpu3:11434", 1), ("http://gpu4:11434", 1)],
        ),
        ([], [("http://gpu1:11434", 1), ("http://gpu2:11434", 1)]),
    ],
)
def test_upstream_flags_replace_the_servers_the_environment_names(
    flags: list[str], served: list[tuple[str, int | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_UPSTREAMS", "http://gpu1:11434,http://gpu2:11434")
    monkeypatch.setenv("OLLAMA_HOST", "http://gpu9:11434")
    slots = 1 if len(served) > 1 else None
    cfg = serve_settings(flags, slots=slots, max_queue=None, db=None)
    assert [(s.url, s.slots) for s in cfg.upstream_specs] == served


def test_calls_turned_away_busy_do_not_use_up_the_departments_calls_a_minute(
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    open_ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=2))
    emu = emulators(LLAMA, token_latency=0.05)
    client = in_process(emu.url, slots=1, max_queue=0)
    call = {"model": LLAMA, "messages": HI, "stream": False}
    batch = threading.Thread(
        target=client.post, args=("/api/chat",), kwargs={"json": call}
    )  # default/default holds the one slot for a while
    batch.start()
    deadline = time.monotonic() + 10
    while emu.in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sales = {"X-Ometer-Department": "sales"}
    for _ in range(2):  # a client retrying Ollama's busy answer, as clients do
        assert client.post("/api/chat", json=call, headers=sales).status_code == 503
    batch.join(timeout=30)
    for _ in range(2):  # its two calls of the minute are still its own
        assert client.post("/api/chat", json=call, headers=sales).status_code == 200
    over = client.post("/api/chat", json=call, headers=sales)
    assert over.status_code == 429 and "2 calls a minute" in over.json()["error"]


def test_a_weight_changed_while_calls_wait_shares_the_next_slots(sqlite_url: str) -> None:
    ledger = open_ledger(sqlite_url)
    server = Capacity(1, "gpu")
    queue, rates = FairQueue(max_queue=100), RateLimits()

    async def run() -> list[str]:
        held = queue.grant_now(("acme", "warm"), lambda: server)
        assert held is not None
        waiting = []
        for department in ["support"] * 4 + ["batch"] * 4:  # all weight 1 when they came
            admitted = rates.admit("acme", department)
            call = queue.acquire(admitted.flow, lambda: server, weight=admitted.weight)
            waiting.append((department, asyncio.ensure_future(call)))
        await asyncio.sleep(0)
        ledger.set_limit(Limit("acme", "support", weight=3))  # no support call arrives after
        keeping = asyncio.ensure_future(keep_limits(ledger, rates, queue))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if rates.weight_of(("acme", "support")) == 3:
                break
        await asyncio.sleep(0)
        keeping.cancel()
        order, current = [], held
        for _ in range(len(waiting)):
            current.release()
            await asyncio.sleep(0)
            department, task = next(
                (d, t) for d, t in waiting if t.done() and d + str(id(t)) not in order
            )
            order.append(department + str(id(task)))
            current = task.result()
        current.release()
        return [entry.rstrip("0123456789") for entry in order]

    order = asyncio.run(run())
    # Three of support's for each of batch's, from the next slot on.
    assert order[:5].count("support") == 4, order


@pytest.mark.parametrize("item", [b"{}", b"[]"])
def test_a_passed_through_body_is_read_within_the_bounds_a_metered_one_is(
    item: bytes, in_process: Callable[..., TestClient]
) -> None:
    """The model a passed-through ``/api/show`` names was read from its body with no bound:
    3 MB of empty objects or arrays took 70 MB (32 MB, the largest body: 770 MB each, and
    half a second of the event loop). It is read as a metered body is; one that holds more
    than any call needs names no model, and goes on as it came."""
    import tracemalloc

    from tests._raw_http import RawServer

    tags = json.dumps({"models": [{"model": LLAMA}]}).encode()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    answer += b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(tags), tags)
    servers = [RawServer(lambda: answer) for _ in range(2)]  # they read no body as JSON
    try:
        client = in_process(*(server.url for server in servers))
        body = b'{"model": "' + LLAMA.encode() + b'", "x": [' + b",".join([item] * 10**6) + b"]}"
        tracemalloc.start()
        try:
            reply = client.post("/api/show", content=body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        for server in servers:
            server.close()
    assert (reply.status_code, reply.content) == (200, tags)
    assert peak < 8 * len(body), (peak, len(body))


def test_a_server_without_api_ps_is_in_the_fleet_with_nothing_known_loaded(
    liar: Callable[[dict[str, tuple[int, bytes]]], str],
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
) -> None:
    # An Ollama older than /api/ps (0.1.38), or a compatible server, answers it 404: it
    # still serves its models, so it is up, with no model known to be loaded.
    tags = json.dumps({"models": [{"name": QWEN}]}).encode()
    old = liar({"/api/tags": (200, tags)})
    good = emulators(LLAMA)
    client = in_process(good.url, old)
    health = client.get("/healthz").json()
    assert [s["state"] for s in health["servers"]] == ["up", "up"]
    (shown,) = [s for s in client.get("/api/dash").json()["servers"] if s["url"] == old]
    assert (shown["models"], shown["loaded"], shown["problem"]) == ([QWEN], [], None)
    listed = client.get("/api/tags").json()["models"]
    assert sorted(m.get("model") or m["name"] for m in listed) == [LLAMA, QWEN]


def test_a_call_that_finds_a_free_slot_has_a_queue_time_of_zero(
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(f"{one.url}#slots=1", f"{two.url}#slots=1")
    one.inject(Fault.HTTP_503, times=1)  # the first call moves, to a free slot at once
    for stream in (False, True):
        reply = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": stream})
        assert reply.status_code == 200, reply.text
    spans = committed(open_ledger(sqlite_url)).latest(SpanFilter(), 10)
    assert [s.queue_ns for s in spans] == [0, 0]


def test_a_call_that_moves_keeps_its_departments_concurrency_place(
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    # sales may run one call at once. Its call fails on the first server and moves to the
    # second, whose one slot hr holds: sales' next call must not take sales' place (with
    # the first server's freed slot) and run ahead of the call that is already under way.
    ledger = open_ledger(sqlite_url)
    ledger.set_limit(Limit("default", "sales", concurrency=1))
    one, two = emulators(LLAMA), emulators(LLAMA, QWEN, token_latency=60.0)
    client = in_process(f"{one.url}#slots=1", f"{two.url}#slots=1", discovery_interval=3600)
    gateway = client.app_state["gateway"]
    one.inject(Fault.HTTP_503, times=1)
    answers: dict[str, Any] = {}

    def call(name: str, model: str, dept: str) -> threading.Thread:
        body = {"model": model, "messages": [{"role": "user", "content": name}], "stream": False}
        headers = {"X-Ometer-Department": dept}
        thread = threading.Thread(
            target=lambda: answers.__setitem__(
                name, client.post("/api/chat", json=body, headers=headers)
            )
        )
        thread.start()
        return thread

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    threads = [call("hr's", QWEN, "hr")]  # only the second server has qwen: hr holds its slot
    try:
        until(lambda: two.in_flight == 1)
        threads.append(call("first", LLAMA, "sales"))  # fails on the first; waits for the second
        until(lambda: gateway.fleet.queue.waiting == 1)
        # The moving call waits: /api/dash says whose it is, as it does of any waiting call.
        waiting = {"waiting": 1, "by_department": {"default/sales": 1}}
        assert client.get("/api/dash").json()["queue"] == waiting
        threads.append(call("second", LLAMA, "sales"))
        until(lambda: gateway.fleet.queue.waiting == 2 or "second" in answers)
        assert "second" not in answers  # it waits for sales' place, held by the moving call
        assert gateway.rates.running()[("department", "default", "sales")] == 1
    finally:
        two.hurry()
        for thread in threads:
            thread.join(timeout=30)
    assert [answers[n].status_code for n in ("hr's", "first", "second")] == [200, 200, 200]
    asked = [r.body["messages"][0]["content"] for r in two.requests_to("/api/chat")]
    asked += [r.body["messages"][0]["content"] for r in one.requests_to("/api/chat")]
    assert asked.index("first") < asked.index("second") or asked[-1] == "second"
    assert gateway.rates.running() == {}


def test_the_time_a_call_spent_on_a_server_that_failed_it_is_not_the_next_ones_busy_time(
    emulators: Callable[..., OllamaEmulator],
    in_process: Callable[..., TestClient],
    sqlite_url: str,
) -> None:
    # OpenAI's routes say nothing of Ollama's busy time: the meter's clock stands in for it.
    # The call hangs on the first server until it times out (1 s), then the second answers:
    # that second is neither the second server's GPU time nor charged as such.
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(one.url, two.url, upstream_timeout=1, discovery_interval=3600)
    one.inject(Fault.HANG, times=1)
    body = {"model": LLAMA, "messages": HI, "stream": False}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert (len(one.requests_to("/v1/chat/completions")), two.hangups) == (1, 0)
    (span,) = committed(open_ledger(sqlite_url)).latest(SpanFilter(), 10)
    assert span.upstream_host == two.url and span.duration_source == "measured"
    busy = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
    assert busy <= span.latency_ns - 1_000_000_000, (busy, span.latency_ns)


def test_a_server_that_fails_every_call_has_served_none(
    emulators: Callable[..., OllamaEmulator], in_process: Callable[..., TestClient]
) -> None:
    # /api/dash's "served": calls the server answered, not calls it was given and failed
    # (each moved to the other server, which served them).
    one, two = emulators(LLAMA), emulators(LLAMA)
    client = in_process(one.url, two.url, discovery_interval=3600, breaker_failures=100)
    one.inject(Fault.HTTP_503, times=100)
    for _ in range(3):
        reply = client.post("/api/chat", json={"model": LLAMA, "messages": HI, "stream": False})
        assert reply.status_code == 200, reply.text
    assert one.requests_to("/api/chat")  # it was tried, and failed the call
    servers = {s["url"]: s["served"] for s in client.get("/api/dash").json()["servers"]}
    assert servers == {one.url: 0, two.url: 3}


@pytest.mark.parametrize(("reset", "final"), [(30, False), (60, False), (3600, True)])
def test_an_open_circuit_longer_than_a_clients_wait_tells_clients_not_to_sleep_on_it(
    in_process: Callable[..., TestClient], reset: float, final: bool
) -> None:
    """The Anthropic client sleeps whatever ``Retry-After`` says before it retries a 503 (up to
    49 days), unless told ``x-should-retry: false``: with ``OMETER_BREAKER_RESET`` at an hour,
    a program stood still for the hour, twice. A wait a client may sleep (a minute, the OpenAI
    client's own cap) stays one to retry."""
    client = in_process(unreachable_url(), breaker_failures=1, breaker_reset=reset, retries=0)
    call = {"model": LLAMA, "messages": HI, "stream": False}
    assert client.post("/api/chat", json=call).status_code == 502
    refused = client.post("/api/chat", json=call)
    assert refused.status_code == 503
    assert refused.headers.get("x-should-retry") == ("false" if final else None)
