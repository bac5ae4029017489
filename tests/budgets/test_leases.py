"""Budgets at gateway speed: calls admitted against a leased slice in memory, never past the limit."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import event, func, select

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger.models import BUDGET_RESERVATIONS
from ollama_meter.meter._request import facts_of
from ollama_meter.records import new_span_row_id
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.budgets.test_gate import BOUND, HELLO
from tests.factories import make_span, token_prices
from tests.gateway.conftest import Gateway

OUT = expected_counts("llama3.1:8b", HELLO)[1]
BODY = {"model": "llama3.1:8b", "messages": HELLO, "stream": False, "options": {"num_predict": OUT}}


def ask(gateway: Gateway, dept: str = "sales") -> int:
    return httpx.post(
        f"{gateway.url}/api/chat",
        json=BODY,
        headers={"X-Ometer-Tenant": "acme", "X-Ometer-Department": dept},
        timeout=30,
    ).status_code


def cap(gateway: Gateway, limit: int) -> Budget:
    gateway.ledger.add_price_rule(token_prices("llama3.1:*"))
    return gateway.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=limit, currency="USD")
    )


def held(gateway: Gateway) -> int:
    with gateway.ledger.read() as conn:
        return int(conn.execute(select(func.count()).select_from(BUDGET_RESERVATIONS)).scalar_one())


def test_the_bound_in_the_tests_is_what_the_meter_reserves() -> None:
    facts = facts_of("chat", BODY)
    limits = facts.bound(4096)
    assert limits.output_tokens == OUT
    assert (limits.input_tokens * 1000 + limits.output_tokens * 2000) == BOUND


def test_a_gateway_admits_most_calls_without_the_ledger(
    serve: Any, emulator: OllamaEmulator
) -> None:
    gateway = serve(emulator.url)
    cap(gateway, BOUND * 1000)
    statuses = [ask(gateway) for _ in range(40)]
    assert statuses == [200] * 40
    meter = gateway_meter(gateway)
    assert meter.budgets.renewals <= 2  # one lease covers a quarter of the room
    assert held(gateway) == 1  # one lease row, not one reservation per call
    gateway.server.should_exit = True


def test_near_the_limit_every_call_is_decided_exactly(serve: Any, emulator: OllamaEmulator) -> None:
    gateway = serve(emulator.url)
    cost = expected_counts("llama3.1:8b", HELLO)[0] * 1000 + OUT * 2000
    # Room for the bound of a call after 6 calls, not after 7: exactly 7 are admitted.
    cap(gateway, cost * 6 + BOUND)
    statuses = [ask(gateway) for _ in range(10)]
    assert statuses == [200] * 7 + [429] * 3
    spans = gateway.ledger.latest(SpanFilter(status="ok"), 100)
    assert sum(s.cost_total for s in spans) == cost * 7


NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
_tenants = (f"w{n}" for n in itertools.count())


def _gate(
    ledger: Ledger, limit: int, share: float, tenant: str | None = None
) -> tuple[BudgetGate, Callable[[int], Any]]:
    """A month's budget of ``limit`` for a new tenant's sales (or ``tenant``'s), a gate on
    ``ledger``, and what admits a call of an amount through it."""
    tenant = tenant or next(_tenants)
    ledger.save_budget(
        Budget(tenant=tenant, department="sales", period="month", limit=limit, currency="USD")
    )
    gate = BudgetGate(ledger, tz=UTC, lease_share=share)

    def admit(amount: int) -> Any:
        return gate.admit(
            call_id=new_span_row_id(),
            tenant=tenant,
            department="sales",
            estimate=Estimate(amount, "USD"),
            now=NOW,
        )

    return gate, admit


@contextlib.contextmanager
def _after_statement(ledger: Ledger, at: int, other: threading.Thread) -> Iterator[list[bool]]:
    """Run ``other`` after the ``at``-th statement ``ledger`` sends in the block (after the
    block when it sends fewer); the list given says, once the block ends, whether it ran
    inside. On PostgreSQL it runs to its end between that statement and the next; on SQLite
    it waits for the block's write lock, and lands after it."""
    statements = itertools.count()

    def meanwhile(*_: Any) -> None:
        if next(statements) == at:
            other.start()
            if ledger.engine.dialect.name == "postgresql":
                other.join()

    inside: list[bool] = []
    event.listen(ledger.engine, "after_cursor_execute", meanwhile)
    try:
        yield inside
    finally:
        event.remove(ledger.engine, "after_cursor_execute", meanwhile)
        inside.append(other.ident is not None)
        if not inside[0]:
            other.start()
        other.join()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bound=st.integers(1, 10**6),
    percent=st.integers(0, 100),
    share=st.sampled_from([0.0, 0.25]),
)
def test_a_call_committed_and_not_settled_yet_is_counted_once(
    db_url: str, bound: int, percent: int, share: float
) -> None:
    """A call's span is committed, then its hold settled (the gateway's write-behind thread,
    or the meter after its own commit): an admission between the two reads the call's cost
    in the spend, and the call's hold must not count it again. Before, the next call that
    fitted exactly was refused (the near-the-limit gateway test, once, under load)."""
    ledger, tenant = Ledger(db_url), next(_tenants)
    cost = bound * percent // 100
    gate, admit = _gate(ledger, cost + bound, share, tenant)
    try:
        first = admit(bound)
        gate.ended(first, cost)
        spent = {"tenant": tenant, "department": "sales", "cost_total": cost}
        ledger.record([make_span(id=first.id, started_at=NOW, **spent)])  # not settled yet
        second = admit(bound)  # the room left, exactly
        with pytest.raises(BudgetExceeded):
            admit(1)
        gate.settle(first)
        with pytest.raises(BudgetExceeded):
            admit(1)
        gate.ended(second, 0)
        gate.settle(second, recorded=False)  # it cost nothing: its span holds nothing
        assert admit(bound) is not None
    finally:
        gate.close(give_back=False)
        ledger.dispose()


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bound=st.integers(1, 10**6),
    percent=st.integers(1, 100),
    share=st.sampled_from([0.0, 0.25]),
)
def test_a_call_committed_while_a_lease_is_renewed_is_counted_once(
    db_url: str, bound: int, percent: int, share: float
) -> None:
    """The write-behind thread commits a call's span while another thread renews the lease
    that holds its cost, after any statement of the renewal: the call that fits exactly is
    admitted, and nothing past it. On PostgreSQL (READ COMMITTED) the renewal asked which
    spans were in, then read the spend in later statements: a commit between the two was
    counted in the spend and held as well (the near-the-limit gateway test, once, under load,
    once commits gathered 100 ms of calls). SQLite's write lock lets no commit in."""
    ledger, writer = Ledger(db_url), Ledger(db_url)
    cost = max(1, bound * percent // 100)
    try:
        at = 0
        while _commit_during_admission(ledger, writer, bound, cost, share, at):
            at += 1
        assert at > 0  # the admission renewed the lease (it holds the call's cost)
    finally:
        ledger.dispose()
        writer.dispose()


def _commit_during_admission(
    ledger: Ledger, writer: Ledger, bound: int, cost: int, share: float, at: int
) -> bool:
    """A call ends costing ``cost``; another, of ``bound``, is admitted in exactly the room
    left, while ``writer`` commits the first one's span after the ``at``-th statement the
    admission sends (after the admission when it sends fewer): whether it landed inside."""
    tenant = next(_tenants)
    gate, admit = _gate(ledger, cost + bound, share, tenant)
    try:
        first = admit(bound)
        gate.ended(first, cost)
        span = make_span(id=first.id, started_at=NOW, tenant=tenant, cost_total=cost)
        commit = threading.Thread(target=writer.record, args=([span],))
        with _after_statement(ledger, at, commit) as inside:
            second = admit(bound)  # the room left, exactly
        assert second is not None
        with pytest.raises(BudgetExceeded):
            admit(1)
        gate.settle(first)
        with pytest.raises(BudgetExceeded):
            admit(1)
        return inside[0]
    finally:
        gate.close(give_back=False)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bound=st.integers(1, 10**6), percent=st.integers(1, 100))
def test_a_lease_given_back_while_another_process_renews_is_counted_once(
    db_url: str, bound: int, percent: int
) -> None:
    """Another process's call is committed and its lease given back (a CLI run's) while this
    one renews, after any statement of the renewal: its cost is in the spend or its bound in
    the holds, never in neither. On PostgreSQL (READ COMMITTED) the spend was read before the
    commit and the holds after the give-back, and a call past the limit was admitted."""
    ours, theirs = Ledger(db_url), Ledger(db_url)
    cost = max(1, bound * percent // 100)
    try:
        at = 0
        while _given_back_during_admission(ours, theirs, bound, cost, at):
            at += 1
        assert at > 0
    finally:
        ours.dispose()
        theirs.dispose()


def _given_back_during_admission(
    ours: Ledger, theirs: Ledger, bound: int, cost: int, at: int
) -> bool:
    """Their call of ``bound`` ends costing ``cost``; ours, one more than the room it leaves,
    is refused while they commit the span and give the lease back after the ``at``-th
    statement our admission sends (after it when it sends fewer): whether it landed inside."""
    tenant, limit = next(_tenants), 2 * bound
    mine, admit_mine = _gate(ours, limit, 0.0, tenant)
    their = BudgetGate(theirs, tz=UTC, lease_share=0.0)
    try:
        call = their.admit(
            call_id=new_span_row_id(),
            tenant=tenant,
            department="sales",
            estimate=Estimate(bound, "USD"),
            now=NOW,
        )
        their.ended(call, cost)
        span = make_span(id=call.id, started_at=NOW, tenant=tenant, cost_total=cost)

        def done() -> None:
            theirs.record([span])
            their.settle(call)  # the lease goes back

        with (
            _after_statement(ours, at, threading.Thread(target=done)) as inside,
            pytest.raises(BudgetExceeded),
        ):
            admit_mine(limit - cost + 1)
        assert admit_mine(limit - cost) is not None  # the room left, exactly
        return inside[0]
    finally:
        mine.close(give_back=False)
        their.close(give_back=False)


def test_a_lease_given_back_as_the_next_call_renews_is_held_once(db_url: str) -> None:
    """A call settles and its lease, a fragment now, goes back (after the lock is let go);
    the next call renews after any statement of that give-back: it is admitted in exactly
    the room left. The row not dropped yet was counted as another process's hold, and the
    call refused (the near-the-limit gateway test, under load, with renewals read at one
    moment already)."""
    ledger = Ledger(db_url)
    try:
        at = 0
        while _renewed_during_give_back(ledger, at):
            at += 1
        assert at > 0
    finally:
        ledger.dispose()


def _renewed_during_give_back(ledger: Ledger, at: int) -> bool:
    """Whether the second admission ran inside the first call's give-back (else after it)."""
    tenant, bound, cost = next(_tenants), 1000, 600
    gate, admit = _gate(ledger, cost + bound, 0.25, tenant)
    admitted: list[Any] = []

    def second() -> None:
        try:
            admitted.append(admit(bound))
        except BudgetExceeded as exc:
            admitted.append(exc)

    try:
        first = admit(bound)
        gate.ended(first, cost)
        ledger.record([make_span(id=first.id, started_at=NOW, tenant=tenant, cost_total=cost)])
        with _after_statement(ledger, at, threading.Thread(target=second)) as inside:
            gate.settle(first)  # a fragment of bound - cost is left: it goes back
        assert [type(a) for a in admitted] == [Reservation]  # the room left, exactly
        return inside[0]
    finally:
        gate.close(give_back=False)


def test_two_gateways_on_one_ledger_never_overshoot(serve: Any, emulator: OllamaEmulator) -> None:
    one, two = serve(emulator.url), serve(emulator.url)
    limit = BOUND * 12
    cap(one, limit)
    emulator.latency = 0.05
    outcomes: list[int] = []
    start = threading.Barrier(48)

    def caller(index: int) -> None:
        start.wait()
        for _ in range(2):
            outcomes.append(ask(one if index % 2 else two))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emulator.latency = 0.0
    assert set(outcomes) <= {200, 429}
    spent = sum(s.cost_total for s in one.ledger.latest(SpanFilter(status="ok"), 1000))
    assert 0 < spent <= limit
    # Twelve bounds fit at once; each gateway's lease may strand less than one call's bound
    # while its calls are in flight.
    assert outcomes.count(200) >= 10


def test_leases_are_given_back_when_the_gateway_stops(
    serve_on: Any, emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gateway = serve_on(emulator.url, sqlite_url)
    cap(gateway, BOUND * 1000)
    assert ask(gateway) == 200 and held(gateway) == 1
    gateway.server.should_exit = True
    for _ in range(200):
        if not gateway.server.started or held(gateway) == 0:
            break
        threading.Event().wait(0.05)
    threading.Event().wait(0.5)
    assert held(gateway) == 0


def gateway_meter(gateway: Gateway) -> Any:
    """The meter the running gateway uses."""
    return gateway.meter
