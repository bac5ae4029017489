"""Several servers behind one gateway: routing by model, slots, the fair queue, limits.

Each emulator is a real HTTP server on its own port and the gateway a real server in
front of them; lower bounds on time are asserted (a slot frees only when a call
ends), never upper ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import ollama
import openai
import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.periods import parse_period
from ollama_meter.records import Limit, PriceRule
from ollama_meter.reports import chargeback
from ollama_meter.testing import DEFAULT_MODELS, Fault, OllamaEmulator
from tests.gateway.conftest import Gateway

LLAMA, QWEN = "llama3.1:8b", "qwen2.5:7b"
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def only(*names: str) -> list[Any]:
    return [m for m in DEFAULT_MODELS if m.name in names]


@pytest.fixture
def fleet(serve_on: Callable[..., Gateway], sqlite_url: str) -> Callable[..., Gateway]:
    def start(*upstreams: str, **config: Any) -> Gateway:
        settings = {"upstreams": ",".join(upstreams), "discovery_interval": 0.2, **config}
        return serve_on(upstreams[0].split("#")[0], sqlite_url, config=settings)

    return start


def spans(ledger: Ledger) -> list[Any]:
    return sorted(ledger.latest(SpanFilter(), 1000), key=lambda s: s.started_at)


def chat(url: str, model: str, text: str = "hello", dept: str = "sales", **kw: Any) -> Any:
    client = ollama.Client(host=url, headers={"X-Ometer-Department": dept})
    return client.chat(model=model, messages=[{"role": "user", "content": text}], **kw)


def prompts(emu: OllamaEmulator) -> list[str]:
    return [r.body["messages"][0]["content"] for r in emu.requests_to("/api/chat")]


def in_parallel(*calls: Callable[[], object]) -> list[object]:
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            results[index] = call()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def dash(gw: Gateway) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{gw.url}/api/dash", timeout=10).json()
    return answer


def test_each_call_goes_to_a_server_that_has_its_model(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    llama, qwen = emulators(LLAMA), emulators(QWEN, "nomic-embed-text:latest")
    gw = fleet(llama.url, qwen.url)
    assert chat(gw.url, LLAMA).message.content
    assert chat(gw.url, "QWEN2.5:7b").message.content  # names resolve as Ollama does
    ollama.Client(host=gw.url).embed(model="nomic-embed-text", input="hi")
    reply = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x").chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    assert len(llama.requests_to("/api/chat")) == 1 and not llama.requests_to(
        "/v1/chat/completions"
    )
    assert len(qwen.requests_to("/api/chat")) == 1 and len(qwen.requests_to("/api/embed")) == 1
    assert len(qwen.requests_to("/v1/chat/completions")) == 1
    hosts = {(s.request_model.lower(), s.upstream_host) for s in spans(gw.ledger)}
    assert hosts == {
        (LLAMA, llama.url),
        (QWEN, qwen.url),
        ("nomic-embed-text", qwen.url),
    }
    assert all(s.status == "ok" and s.queue_ns is not None for s in spans(gw.ledger))
    # The union of what the servers have, have loaded, and list for OpenAI clients.
    tags = [m.model for m in ollama.Client(host=gw.url).list().models]
    assert tags == [LLAMA, QWEN, "nomic-embed-text:latest"]
    loaded = {m.model for m in ollama.Client(host=gw.url).ps().models}
    assert loaded == {LLAMA, QWEN, "nomic-embed-text:latest"}
    ids = [m.id for m in openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x").models.list()]
    assert ids == [LLAMA, QWEN, "nomic-embed-text:latest"]
    assert ollama.Client(host=gw.url).show(QWEN).details.family == "qwen2"
    assert qwen.requests_to("/api/show") and not llama.requests_to("/api/show")


def test_openai_clients_retrieve_a_model_from_a_server_that_has_it(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    # Ollama documents GET /v1/models/{model} (the openai client's models.retrieve).
    llama, qwen = emulators(LLAMA), emulators(QWEN)
    gw = fleet(llama.url, qwen.url)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    model = client.models.retrieve(QWEN)
    assert (model.id, model.object, model.owned_by) == (QWEN, "model", "library")
    assert qwen.requests_to(f"/v1/models/{QWEN}") and not llama.requests_to(f"/v1/models/{QWEN}")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nope:1b")
    assert "nope:1b" in missing.value.message
    assert not spans(gw.ledger)  # unmetered, like /v1/models


def test_servers_sharing_a_model_share_the_calls_and_never_run_more_than_their_slots(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    one, two = emulators(LLAMA, token_latency=1.0), emulators(LLAMA, token_latency=1.0)
    gw = fleet(f"{one.url}#slots=1", two.url, slots=2)
    results: list[object] = []
    calls = [
        threading.Thread(target=lambda i=i: results.append(chat(gw.url, LLAMA, f"call {i}")))
        for i in range(7)
    ]
    for thread in calls:
        thread.start()
    # Three slots for seven calls: four wait, however slowly the machine started them (the
    # three running take a second a token, so none ends while the four wait 0.1 s more).
    wait_for(lambda: dash(gw)["queue"]["waiting"] == 4, "four calls to wait")
    time.sleep(0.1)
    one.hurry()
    two.hurry()
    for thread in calls:
        thread.join(timeout=60)
    assert len(results) == 7 and all(isinstance(r, ollama.ChatResponse) for r in results)
    assert (one.most_in_flight, two.most_in_flight) == (1, 2)  # the caps, seen at the servers
    assert len(prompts(one)) + len(prompts(two)) == 7 and prompts(one) and prompts(two)
    recorded = spans(gw.ledger)
    assert {s.upstream_host for s in recorded} == {one.url, two.url}
    waited = sorted(s.queue_ns for s in recorded)[-4:]
    assert all(ns >= 100_000_000 for ns in waited), waited
    assert dash(gw)["queue"] == {"waiting": 0, "by_department": {}}
    servers = {s["url"]: s for s in dash(gw)["servers"]}
    assert [servers[u]["in_flight"] for u in (one.url, two.url)] == [0, 0]
    assert [servers[u]["slots"] for u in (one.url, two.url)] == [1, 2]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'ometer_queue_duration_seconds_count{department="sales",tenant="default"} 7.0' in metrics


def test_a_flooding_department_does_not_make_another_wait_behind_it(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    emu = emulators(LLAMA, QWEN, token_latency=1.0)
    gw = fleet(emu.url, emu.url.replace("127.0.0.1", "localhost"), slots=1)
    # Both "servers" are the one emulator: two slots in all, eight streamed calls of
    # batch, each token slow until all eight are in (however busy the machine is).
    flood = [
        threading.Thread(
            target=lambda i=i: list(chat(gw.url, LLAMA, f"batch {i}", "batch", stream=True))
        )
        for i in range(8)
    ]
    for thread in flood:
        thread.start()
    wait_for(lambda: dash(gw)["queue"]["waiting"] == 6, "the flood to queue")
    assert dash(gw)["queue"]["by_department"] == {"default/batch": 6}
    # Support asks while both slots are still held (however slowly its call arrives), then
    # the two running replies end at once: the next slot is given to a queue that has it.
    asking = threading.Thread(target=chat, args=(gw.url, LLAMA, "support's question", "support"))
    asking.start()
    wait_for(lambda: "default/support" in dash(gw)["queue"]["by_department"], "support to wait")
    emu.hurry()
    for thread in [asking, *flood]:
        thread.join(timeout=60)
    order = prompts(emu)
    # The next free slot went to support: behind at most the two calls then running
    # and one more that took the other slot first, never behind the other five waiting.
    assert order.index("support's question") <= 3, order
    support = next(s for s in spans(gw.ledger) if s.department == "support")
    batch = [s.queue_ns for s in spans(gw.ledger) if s.department == "batch"]
    assert support.queue_ns < max(batch)


def test_limits_from_the_ledger_answer_429_with_retry_after_and_cap_concurrency(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway], sqlite_url: str
) -> None:
    emu = emulators(LLAMA, token_latency=0.03)
    ledger = Ledger(sqlite_url)
    ledger.set_limit(Limit("default", "sales", rpm=2))
    ledger.set_limit(Limit("default", "hr", tpm=5))
    ledger.set_limit(Limit("default", "support", concurrency=1))
    gw = fleet(emu.url)
    first = time.monotonic()
    chat(gw.url, LLAMA, dept="sales")
    chat(gw.url, LLAMA, dept="sales")
    over = httpx.post(
        f"{gw.url}/api/chat",
        json={"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers={"X-Ometer-Department": "sales"},
    )
    elapsed = time.monotonic() - first
    assert over.status_code == 429
    wait = int(over.headers["retry-after"])
    assert 60 - elapsed - 1 <= wait <= 60  # until the first call leaves the minute
    assert over.json() == {
        "error": f"default/sales is over its limit of 2 calls a minute; try again in {wait} s "
        "(see `ometer limit list`)"
    }
    with pytest.raises(openai.RateLimitError) as refused:
        openai.OpenAI(
            base_url=f"{gw.url}/v1",
            api_key="x",
            max_retries=0,
            default_headers={"X-Ometer-Department": "sales"},
        ).chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["message"].startswith("default/sales is over its limit")  # type: ignore[index]
    limited = [s for s in spans(gw.ledger) if s.error_type == "rate_limited"]
    assert [(s.status, s.http_status, s.department) for s in limited] == [
        ("rejected", 429, "sales")
    ] * 2
    chat(gw.url, LLAMA, dept="hr")  # more tokens than hr's 5 a minute: the next call waits
    with pytest.raises(ollama.ResponseError) as tpm:
        chat(gw.url, LLAMA, dept="hr")
    assert tpm.value.status_code == 429 and "5 tokens a minute" in str(tpm.value)
    results = in_parallel(*(lambda: chat(gw.url, LLAMA, dept="support") for _ in range(3)))
    assert all(isinstance(r, ollama.ChatResponse) for r in results)
    assert emu.most_in_flight == 1  # support's calls took turns; nothing refused them
    waited = sorted(s.queue_ns for s in spans(gw.ledger) if s.department == "support")
    assert waited[-1] >= 30_000_000


def test_under_a_tpm_calls_running_at_once_cannot_all_slip_under_it(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway], sqlite_url: str
) -> None:
    """Each call's prompt counts when it is admitted, not only its tokens when it ends: two
    calls of about 400 tokens fit hr's 1,000 a minute while both run, a third does not, and a
    prompt larger than the whole minute is refused outright."""
    emu = emulators(LLAMA, token_latency=1.0)  # the first call runs until hurried
    Ledger(sqlite_url).set_limit(Limit("default", "hr", tpm=1_000))
    gw = fleet(emu.url, slots=1)
    prompt = "x" * 1_600  # about 400 tokens, four characters a token
    first = threading.Thread(target=chat, args=(gw.url, LLAMA, prompt, "hr"))
    first.start()
    wait_for(lambda: emu.in_flight == 1, "the first call to run")
    second = threading.Thread(target=chat, args=(gw.url, LLAMA, prompt, "hr"))
    second.start()
    wait_for(lambda: dash(gw)["queue"]["waiting"] == 1, "the second call to wait for the slot")
    with pytest.raises(ollama.ResponseError) as third:
        chat(gw.url, LLAMA, prompt, dept="hr")
    assert third.value.status_code == 429
    assert "default/hr is over its limit of 1,000 tokens a minute" in str(third.value)
    huge = httpx.post(
        f"{gw.url}/api/chat",
        json={"model": LLAMA, "messages": [{"role": "user", "content": "y" * 8_000}]},
        headers={"X-Ometer-Department": "hr"},
    )
    assert huge.status_code == 413 and "retry-after" not in huge.headers  # final: no retry
    assert huge.json() == {
        "error": "this call's prompt is about 2,000 tokens, more than default/hr's limit of "
        "1,000 tokens a minute, so no wait would let it in: shorten it, or raise the limit "
        "(`ometer limit set`)"
    }
    emu.hurry()
    for thread in (first, second):
        thread.join(timeout=60)
    assert prompts(emu) == [prompt, prompt]  # neither refused call reached the server
    refused = [s for s in spans(gw.ledger) if s.error_type == "rate_limited"]
    assert [(s.status, s.http_status, s.department) for s in refused] == [
        ("rejected", 429, "hr"),
        ("rejected", 413, "hr"),
    ]


def test_a_call_that_reached_no_server_names_none_and_adds_no_capacity(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway], sqlite_url: str
) -> None:
    """A call refused before any server was chosen (its department's limit, a malformed
    body) names no server: it names the first one no more than any other, and chargeback's
    capacity counts only the servers calls were sent to."""
    first, second = emulators(LLAMA), emulators(QWEN)
    Ledger(sqlite_url).set_limit(Limit("default", "sales", rpm=1))
    gw = fleet(first.url, second.url)
    chat(gw.url, QWEN, dept="sales")
    over = gw.client.post(
        "/api/chat",
        json={"model": QWEN, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers={"X-Ometer-Department": "sales"},
    )
    bad = gw.client.post("/api/chat", json={"model": QWEN, "messages": 5})
    assert (over.status_code, bad.status_code) == (429, 400)
    recorded = spans(gw.ledger)
    assert [(s.status, s.error_type, s.upstream_host) for s in recorded] == [
        ("ok", None, second.url),
        ("rejected", "rate_limited", ""),
        ("error", "bad_request", ""),
    ]
    assert first.requests_to("/api/chat") == []
    month = recorded[0].started_at.strftime("%Y-%m")
    result = chargeback(
        gw.ledger, month, tz=ZoneInfo("UTC"), now=recorded[0].started_at,
        currency="USD", fixed_cost=Decimal("100.00"),
    )  # fmt: skip
    window = parse_period(month, tz=ZoneInfo("UTC"), now=recorded[0].started_at)
    assert result.capacity_ns == (window.end - window.start) // timedelta(microseconds=1) * 1000


def test_a_full_queue_answers_busy_in_ollamas_words(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    emu = emulators(LLAMA, token_latency=0.05)
    gw = fleet(emu.url, slots=1, max_queue=1)
    results = in_parallel(*(lambda: chat(gw.url, LLAMA) for _ in range(3)))
    refused = [r for r in results if isinstance(r, ollama.ResponseError)]
    assert len(refused) == 1 and refused[0].status_code == 503
    assert refused[0].error == BUSY
    (busy,) = [s for s in spans(gw.ledger) if s.status != "ok"]
    assert (busy.status, busy.error_type, busy.http_status) == ("error", "server_busy", 503)
    assert busy.upstream_host == ""  # it went to no server
    emu.token_latency = 1.0  # both run until hurried, however slow the machine
    threads = [threading.Thread(target=chat, args=(gw.url, LLAMA)) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: dash(gw)["queue"]["waiting"] == 1, "a call to wait")
    reply = httpx.post(f"{gw.url}/api/chat", json={"model": LLAMA, "messages": []})
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
    emu.hurry()  # the two calls need not run their whole replies out
    for thread in threads:
        thread.join(timeout=60)


def test_a_caller_who_hangs_up_while_queued_leaves_the_queue_and_keeps_no_slot(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway], sqlite_url: str
) -> None:
    """...and pays no request fee: no server saw its call (it paid the fee of one served)."""
    fee = PriceRule(pattern="*", currency="USD", per_request=Decimal("0.002"))
    Ledger(sqlite_url).add_price_rules([fee])
    emu = emulators(LLAMA, token_latency=1.0)  # the first call holds the slot until hurried
    gw = fleet(emu.url, slots=1)
    running = threading.Thread(target=chat, args=(gw.url, LLAMA, "first"))
    running.start()
    wait_for(lambda: emu.in_flight == 1, "the first call to run")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gw.url}/api/chat",
            json={"model": LLAMA, "messages": [{"role": "user", "content": "gone"}]},
            timeout=httpx.Timeout(10, read=0.2),
        )
    wait_for(lambda: dash(gw)["queue"]["waiting"] == 0, "the gateway to see the caller leave")
    emu.hurry()
    running.join(timeout=60)
    wait_for(lambda: len(spans(gw.ledger)) == 2, "both spans")
    gone = next(s for s in spans(gw.ledger) if s.status != "ok")
    assert gone.status == "client_abort" and gone.queue_ns >= 100_000_000
    assert gone.upstream_host == ""  # it went to no server
    assert (gone.cost_fee, gone.cost_total) == (0, 0)
    assert [s.cost_fee for s in spans(gw.ledger) if s.status == "ok"] == [2000]
    assert "gone" not in prompts(emu)  # it never reached the server
    assert dash(gw)["queue"]["waiting"] == 0
    assert dash(gw)["servers"][0]["in_flight"] == 0
    chat(gw.url, LLAMA, "after")  # the slot is free
    assert prompts(emu) == ["first", "after"]


def test_a_server_that_stops_is_taken_out_and_its_calls_go_to_the_others(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    gw = fleet(one.url, two.url, breaker_failures=1)
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["status"] == "ok" and [s["state"] for s in health["servers"]] == ["up", "up"]
    one.stop()
    for _ in range(4):
        assert chat(gw.url, LLAMA).message.content
    assert all(s.status == "ok" for s in spans(gw.ledger))
    assert len(prompts(two)) == 4
    health = httpx.get(f"{gw.url}/healthz")
    assert health.status_code == 200  # one server still answers
    assert [s["state"] for s in health.json()["servers"]] == ["down", "up"]
    two.stop()
    wait_for(lambda: httpx.get(f"{gw.url}/healthz").status_code == 503, "both to be down")
    for _ in range(2):  # each server fails a call: both circuits open (for 60 s)
        failed = httpx.post(f"{gw.url}/api/chat", json={"model": LLAMA, "messages": []})
        assert failed.status_code in (502, 503)
    one.start()
    # Discovery reaches it again: back at once, its circuit closed, not after a minute.
    wait_for(
        lambda: httpx.get(f"{gw.url}/healthz").json()["servers"][0]["state"] == "up", "recovery"
    )
    assert chat(gw.url, LLAMA, "back").message.content
    assert prompts(one)[-1] == "back"


def test_a_call_that_moves_and_fails_again_gives_every_slot_back(
    emulators: Callable[..., OllamaEmulator], fleet: Callable[..., Gateway]
) -> None:
    one, two = emulators(LLAMA), emulators(LLAMA)
    gw = fleet(f"{one.url}#slots=1", f"{two.url}#slots=1", retries=1, retry_backoff=0.01)
    for emu in (one, two):
        emu.inject(Fault.HTTP_503, times=5)
    failed = httpx.post(
        f"{gw.url}/api/chat", json={"model": LLAMA, "messages": [], "stream": False}, timeout=30
    )
    # Once on the first server (the move is its retry), twice on the last (1 + 1 retry).
    assert failed.status_code == 503
    assert sorted((one.pending_faults, two.pending_faults)) == [3, 4]
    (span,) = spans(gw.ledger)
    assert (span.status, span.error_type) == ("error", "upstream_5xx")
    last = one if one.pending_faults == 3 else two
    assert span.upstream_host == last.url  # where it ended
    assert [s["in_flight"] for s in dash(gw)["servers"]] == [0, 0]
    for emu in (one, two):
        emu.clear_faults()
    results = in_parallel(*(lambda: chat(gw.url, LLAMA) for _ in range(2)))
    assert all(isinstance(r, ollama.ChatResponse) for r in results), results
    assert (one.most_in_flight, two.most_in_flight) == (1, 1)  # both slots are free again
