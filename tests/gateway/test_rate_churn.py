"""Names a caller makes up keep nothing in the rate limits, and churning them lets no caller out
of a limit: counts are kept per limit set (``ometer limit set``), never per name sent, so no
entry of a limited scope is ever evicted to make room for another."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from ollama_meter.gateway._queue import Capacity, FairQueue
from ollama_meter.gateway._rates import OverLimit, RateLimits
from ollama_meter.records import Limit
from tests.gateway.test_rates import S, limits

NAMES = st.text("abcdefghij", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(departments=st.lists(NAMES, min_size=1, max_size=60), rpm=st.integers(1, 8))
def test_a_tenants_rpm_holds_whatever_departments_its_calls_name(
    departments: list[str], rpm: int
) -> None:
    rates, clock = limits(Limit("acme", None, rpm=rpm, tpm=10**9))
    admitted = 0
    for n, department in enumerate(departments):
        for tenant in (f"made-up-{n}", "acme"):  # another tenant's new name between each
            try:
                rates.admit(tenant, department, tokens=5)
            except OverLimit:
                continue
            admitted += tenant == "acme"
        clock.now += S // 100
    assert admitted == min(rpm, len(departments))  # all within one minute
    # A window only for the limit set: none for the names made up around it.
    assert set(rates._calls) == set(rates._tokens) == {("tenant", "acme")}
    assert rates.running() == {}


def test_a_keys_limit_holds_whatever_names_its_calls_give() -> None:
    rates, _ = limits(Limit("acme", "sales", key_id=7, rpm=3))
    admitted = 0
    for n in range(5_000):
        try:
            rates.admit(f"t{n}", f"d{n}", 7)
        except OverLimit:
            continue
        admitted += 1
    assert admitted == 3
    assert set(rates._calls) == {("key", "7")}


def test_the_fair_queue_forgets_every_flow_once_its_calls_end() -> None:
    async def run() -> FairQueue:
        queue, server = FairQueue(max_queue=10), Capacity(1, "gpu-1")
        rates = RateLimits()
        for n in range(5_000):
            admission = rates.admit(f"t{n}", f"d{n}")
            grant = await queue.acquire(admission.flow, lambda: server, caps=admission.caps)
            grant.release()
        return queue

    queue = asyncio.run(run())
    assert queue._flows == {} and queue.waiting == 0
