"""A hard budget's limit lowered while two gateways hold leases on it: what they admit after.

A gateway admits against its lease in memory and reads the budgets again every 5 s; the
limit an admin lowers meanwhile (``ometer budget set``, the admin API) is in the ledger at
once. Each gate here reads the budgets again only when told or when it finds them changed
(``ttl`` of an hour), as a gateway's write-behind thread has it look after each commit of
its spans: every admission before that falls in the window, the worst case."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Budget, new_span_row_id
from ollama_meter.testing import OllamaEmulator
from tests.budgets.test_gate import BOUND
from tests.budgets.test_leases import ask, cap
from tests.factories import make_span

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000
START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)


def _burst(gates: list[BudgetGate], ledger: Ledger, calls: list[tuple[int, int]]) -> int:
    """``calls`` (gateway, bound) admitted together, then each ended costing its bound (the
    worst case), its span committed and its hold settled; each gateway that had one then
    looks for changed budgets, as its write-behind thread does after a commit. How many were
    admitted."""
    admitted: list[tuple[int, Reservation, int]] = []
    for g, bound in calls:
        try:
            got = gates[g].admit(
                call_id=new_span_row_id(),
                tenant="acme",
                department="sales",
                estimate=Estimate(bound, "USD"),
                now=NOV,
            )
        except BudgetExceeded:
            continue
        assert got is not None
        admitted.append((g, got, bound))
    for g, got, bound in admitted:
        gates[g].ended(got, bound)
    ledger.record([make_span(id=got.id, started_at=NOV, cost_total=b) for _, got, b in admitted])
    for g, got, _ in admitted:
        gates[g].settle(got)
    for g in {g for g, _, _ in admitted}:
        gates[g].cache.refresh()
    return len(admitted)


def _spent(ledger: Ledger, budget: Budget) -> int:
    with ledger.budget_snapshot() as store:
        return store.spent(budget, "acme", START, END)


def _world(
    tmp_path_factory: pytest.TempPathFactory, limit: int
) -> tuple[Ledger, Budget, list[BudgetGate]]:
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('lowered')}/l.db")
    budget = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=limit, currency="USD")
    )
    gates = [
        BudgetGate(ledger, tz=ZoneInfo("UTC"), lease_share=0.25, ttl=3600, clock=lambda: 0.0)
        for _ in range(2)
    ]
    return ledger, budget, gates


calls = st.lists(st.tuples(st.integers(0, 1), st.integers(1, 10).map(UNIT.__mul__)), max_size=12)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    old=st.integers(20, 400),
    new=st.integers(1, 100),
    before=st.lists(calls, max_size=3),
    after=st.lists(calls, min_size=1, max_size=10),
)
@example(old=100, new=5, before=[[(0, UNIT), (1, UNIT)]], after=[[(0, UNIT), (1, UNIT)]] * 30)
@example(old=100, new=5, before=[[(0, UNIT), (1, UNIT)]], after=[[(0, UNIT)] * 6] * 5)
def test_a_lowered_limit_is_passed_by_at_most_the_calls_admitted_before_a_commit(
    tmp_path_factory: pytest.TempPathFactory,
    old: int,
    new: int,
    before: list[list[tuple[int, int]]],
    after: list[list[tuple[int, int]]],
) -> None:
    """After the limit is lowered, each gateway admits in memory only the calls it admits
    before its next commit (then it reads the budgets again), and never more than its lease
    had free: spend ends at most that past the new limit (or past what was spent already).
    The first pinned example failed twice before: each renewal read the old limit from
    memory and took a new slice of it (62 spent of a limit lowered from 100 to 5 in 60 calls
    of 1); then every call until the 5 s reload was admitted against the lease in memory (43
    of 5: 2 before, and the 41 the leases had free)."""
    ledger, budget, gates = _world(tmp_path_factory, old * UNIT)
    try:
        for burst in before:
            _burst(gates, ledger, burst)
        free = sum(lease.free for gate in gates for lease in gate._leases.values())
        spent_then = _spent(ledger, budget)
        ledger.save_budget(replace(budget, limit=new * UNIT))  # `ometer budget set`, elsewhere
        first: dict[int, int] = {}  # what each gateway admits before its first commit after
        for burst in [*after, [(0, UNIT), (1, UNIT)]]:  # each gateway calls at least once
            for g in {g for g, _ in burst} - set(first):
                first[g] = sum(bound for h, bound in burst if h == g)
            _burst(gates, ledger, burst)
        spent = _spent(ledger, budget)
        over = min(sum(first.values()), free)
        assert spent <= max(new * UNIT, spent_then) + over, (spent, new, over, free)
        _burst(gates, ledger, [(0, UNIT), (1, UNIT)])  # each has read the budgets: exact now
        assert (now := _spent(ledger, budget)) == spent or now <= new * UNIT
    finally:
        for gate in gates:
            gate.close()
        ledger.dispose()


def test_what_two_gateways_spend_of_a_limit_lowered_from_100_to_5(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The README's figures: two gateways have each admitted a call of 1 unit (leases of a
    quarter of the room: 25 and 18.75 units) when the limit is lowered from 100 to 5 units.
    Calls of 1 unit one at a time, each committed before the next: 4 spent (2 before, one
    each before its first commit after; before, all 100, each renewal taking a slice of the
    old limit, then 43). Thirty calls at once on each, all admitted before any commit: 2 and
    what their leases had free (24 + 17.75: 41 calls), and not one more after their commits."""
    ledger, budget, gates = _world(tmp_path_factory, 100 * UNIT)
    try:
        assert _burst(gates, ledger, [(0, UNIT), (1, UNIT)]) == 2
        assert [lease.free for gate in gates for lease in gate._leases.values()] == [
            24 * UNIT,
            17_750_000,
        ]
        ledger.save_budget(replace(budget, limit=5 * UNIT))
        while _burst(gates, ledger, [(0, UNIT), (1, UNIT)]):
            pass
        assert _spent(ledger, budget) == 4 * UNIT
    finally:
        for gate in gates:
            gate.close()
        ledger.dispose()
    ledger, budget, gates = _world(tmp_path_factory, 100 * UNIT)
    try:
        assert _burst(gates, ledger, [(0, UNIT), (1, UNIT)]) == 2
        ledger.save_budget(replace(budget, limit=5 * UNIT))
        assert _burst(gates, ledger, [(0, UNIT), (1, UNIT)] * 30) == 41
        assert _spent(ledger, budget) == 43 * UNIT
        assert _burst(gates, ledger, [(0, UNIT), (1, UNIT)]) == 0
    finally:
        for gate in gates:
            gate.close()
        ledger.dispose()


def test_a_gateway_refuses_past_a_limit_lowered_elsewhere_once_its_call_is_committed(
    serve: Any, emulator: OllamaEmulator, db_url: str
) -> None:
    """A running gateway, its lease a quarter of the room, and after 2 calls the limit lowered
    by another process (`ometer budget set`) to what they cost and one call's bound: the third
    is admitted against the lease in memory; once its span is committed the gateway has read
    the budgets again, and the fourth is refused. Before, it was admitted, and each after it
    until the gateway's reload 5 s on (or its lease ran out)."""
    gateway = serve(emulator.url)
    budget = cap(gateway, BOUND * 100)
    assert [ask(gateway) for _ in range(2)] == [200, 200]
    gateway.settle()
    cost = sum(s.cost_total for s in gateway.ledger.latest(SpanFilter(status="ok"), 10)) // 2
    Ledger(db_url).save_budget(replace(budget, limit=2 * cost + BOUND))
    assert ask(gateway) == 200  # it fits, and no commit has come since
    gateway.settle()
    assert ask(gateway) == 429
    assert sum(s.cost_total for s in gateway.ledger.latest(SpanFilter(status="ok"), 10)) == 3 * cost


def test_a_gateway_whose_calls_commit_their_own_spans_refuses_past_a_lowered_limit_at_once(
    serve: Any, emulator: OllamaEmulator, db_url: str
) -> None:
    """As above, on the gateway's overload path: its write-behind has no room (here: it is
    stopped), so each call commits its own span before answering. That commit did not look
    for changed budgets as the write-behind's does: the fourth call was admitted against the
    lease in memory (200, 4 calls spent, not 3), and each after it until the 5 s reload."""
    gateway = serve(emulator.url)
    budget = cap(gateway, BOUND * 100)
    assert [ask(gateway) for _ in range(2)] == [200, 200]
    gateway.settle()
    behind = gateway.meter.behind
    assert behind is not None and behind.stop(60)  # the commits are the calls' own from now
    cost = sum(s.cost_total for s in gateway.ledger.latest(SpanFilter(status="ok"), 10)) // 2
    Ledger(db_url).save_budget(replace(budget, limit=2 * cost + BOUND))
    assert ask(gateway) == 200  # it fits, and no commit has come since
    assert ask(gateway) == 429
    assert sum(s.cost_total for s in gateway.ledger.latest(SpanFilter(status="ok"), 10)) == 3 * cost


def test_a_python_api_call_under_a_budget_makes_no_read_for_changed_budgets(
    emulator: OllamaEmulator, db_url: str
) -> None:
    """The look for changed budgets after a call commits its own span is the gateway's (its
    write-behind full): the Python API's calls made it too, each one more ledger read (10
    reads of budgets_version in 10 calls; 14 statements a call on SQLite, 12 before). Its
    budgets are read again when due, as before."""
    from sqlalchemy import event

    from ollama_meter import MeteredClient
    from tests.factories import token_prices

    hi = [{"role": "user", "content": "say hi"}]
    with MeteredClient(department="sales", tenant="acme", db_url=db_url) as client:
        client.meter.ledger.add_price_rule(token_prices())
        client.meter.ledger.save_budget(
            Budget(tenant="acme", department="sales", period="month", limit=10**12, currency="USD")
        )
        client.chat(model="llama3.1:8b", messages=hi)  # budgets and prices read
        looked: list[object] = []

        def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if "budgets_version" in repr(parameters):
                looked.append(parameters)

        event.listen(client.meter.ledger.engine, "before_cursor_execute", seen)
        for _ in range(10):
            client.chat(model="llama3.1:8b", messages=hi)
        spans = client.meter.ledger.latest(SpanFilter(status="ok"), 20)
    assert (len(spans), looked) == (11, [])
