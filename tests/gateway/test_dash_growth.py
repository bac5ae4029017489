"""Reports the dashboard runs at once are bounded: a report is kept running for callers that
hung up (the next poll of the same query takes it), so a distinct query per request, each
abandoned, queued a report each on the ledger threads the calls' spans are written on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from ollama_meter._runtime import runtime
from ollama_meter.gateway._dash import KEY_REPORTS, MAX_REPORTS
from ollama_meter.gateway._threads import _ledger_threads, _stop
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "s3cret"


@pytest.fixture
def blocked(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Iterator[tuple[Gateway, ThreadPoolExecutor, threading.Event]]:
    """A served gateway whose ledger threads are all busy until the test sets the event."""
    gw = serve_on(emulator.url, sqlite_url, admin_token=TOKEN)
    pool: ThreadPoolExecutor = runtime().shared("threads", "gateway-ledger", _ledger_threads, _stop)
    gate = threading.Event()
    held = [pool.submit(gate.wait, 60) for _ in range(pool._max_workers)]
    try:
        yield gw, pool, gate
    finally:
        gate.set()
        for future in held:
            future.result()


def dash(gw: Gateway, n: int) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/dash?model=m{n}&token={TOKEN}", timeout=60)


def test_distinct_reports_past_the_most_are_answered_busy_and_queue_nothing(
    blocked: tuple[Gateway, ThreadPoolExecutor, threading.Event],
) -> None:
    """While no report can finish, a flood of distinct queries gets MAX_REPORTS reports
    running and a 503 for every other one, at once (before: each waited its turn)."""
    gw, _, gate = blocked
    more = 50
    with ThreadPoolExecutor(MAX_REPORTS + more) as callers:
        asked = [callers.submit(dash, gw, n) for n in range(MAX_REPORTS + more)]
        deadline = time.monotonic() + 30  # a wait for the answers to come, not a measure
        while sum(f.done() for f in asked) < more:
            assert time.monotonic() < deadline, "queries past the most were not refused"
            time.sleep(0.01)
        busy = [f.result() for f in asked if f.done()]
        assert len(busy) == more and {r.status_code for r in busy} == {503}
        assert all(r.headers["Retry-After"] == "5" and "reports" in r.json()["error"] for r in busy)
        page = httpx.get(f"{gw.url}/dashboard?model=other&token={TOKEN}", timeout=60)
        assert page.status_code == 503
        gate.set()  # the ledger threads are free: the reports run, each answered in full
        answered = [f.result().status_code for f in asked if f.result() not in busy]
        assert answered == [200] * MAX_REPORTS
    assert dash(gw, 0).status_code == 200  # room again


def test_one_keys_flood_of_reports_leaves_room_for_another_tenants_key(
    serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """With keys required and no admin token each key reads its own scope's dashboard; one
    key asking MAX_REPORTS distinct queries (a model name each, abandoned or not) took every
    report the gateway runs, and every other tenant's dashboard answered 503 meanwhile."""
    gate, reporting = threading.Event(), threading.Event()

    def clock() -> datetime:  # read once per report, on a ledger thread: held until the gate
        if reporting.is_set():
            gate.wait(30)
        return datetime.now(UTC)

    gw = serve_on(emulator.url, sqlite_url, clock=clock, require_key=True)
    flooder = gw.ledger.create_key(name="a", tenant="acme", department="sales")[1]
    other = gw.ledger.create_key(name="b", tenant="globex", department="legal")[1]

    def ask(key: str, model: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"}
        return httpx.get(f"{gw.url}/api/dash?model={model}", headers=auth, timeout=60)

    reporting.set()
    try:
        with ThreadPoolExecutor(MAX_REPORTS + 1) as callers:
            flood = [callers.submit(ask, flooder, f"m{n}") for n in range(MAX_REPORTS)]
            time.sleep(0.5)  # the flood's reports are running, or refused, by now
            asked = callers.submit(ask, other, "m0")
            time.sleep(0.3)
            gate.set()
            assert asked.result().status_code == 200, asked.result().text
            answered = sorted(f.result().status_code for f in flood)
    finally:
        gate.set()
    assert answered == [200] * KEY_REPORTS + [503] * (MAX_REPORTS - KEY_REPORTS)
    refused = next(f.result() for f in flood if f.result().status_code == 503)
    assert refused.headers["Retry-After"] == "5"
    assert refused.json()["error"].startswith(f"this key's dashboard is running {KEY_REPORTS}")
