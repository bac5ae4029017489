"""A gateway takes over the budget hold of the ometer client whose call it admits, never holding
a call's bound twice; and no other call can take a hold over: only the client's own span id,
for a call charged to the same tenant, department and model, names it.

The client (a per-call reservation: ``lease_share`` 0) holds each call's bound in rows of its
own before it sends the call; a gateway on the same ledger, told the client's span id, drops
those rows in the transaction that admits the call, and holds the call itself. A hold taken by
the wrong call would leave the call that made it running with nothing held: past the limit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.periods import current_period
from ollama_meter.records import LeaseKey, new_span_row_id

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
BOUND = 58_000
_tenants = (f"h{n}" for n in itertools.count())


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    made = Ledger(db_url)
    yield made
    made.dispose()


def _gates(
    ledger: Ledger, limit: int, *, ttl: timedelta | None = None
) -> tuple[str, BudgetGate, BudgetGate]:
    """A new tenant whose whole spend (any department) may reach ``limit`` a month, a client's
    gate (``ometer chat``, the Python API) and a gateway's, on ``ledger``."""
    tenant = next(_tenants)
    ledger.save_budget(Budget(tenant, None, "month", limit, "USD"))
    kept = {} if ttl is None else {"reservation_ttl": ttl}
    client = BudgetGate(ledger, tz=UTC, lease_share=0.0, **kept)
    gateway = BudgetGate(ledger, tz=UTC, lease_share=0.25)
    return tenant, client, gateway


def _admit(
    gate: BudgetGate,
    tenant: str,
    *,
    department: str = "sales",
    model: str = "llama3.1:8b",
    adopt: str | None = None,
    call_id: str | None = None,
    now: datetime = NOW,
) -> Reservation:
    reservation = gate.admit(
        call_id=call_id or new_span_row_id(),
        tenant=tenant,
        department=department,
        estimate=Estimate(BOUND, "USD"),
        now=now,
        model=model,
        adopt=adopt,
    )
    assert reservation is not None
    return reservation


def _held(ledger: Ledger, tenant: str) -> int:
    """What live lease rows hold of the tenant's budget now."""
    (budget,) = [b for b in ledger.budgets() if b.tenant == tenant]
    assert budget.id is not None
    start = current_period("month", tz=UTC, now=NOW).start
    with ledger.budget_snapshot() as store:
        return store.held(LeaseKey(budget.id, tenant, start), store.clock(NOW))


def test_the_gateway_admits_the_clients_call_on_the_clients_hold(ledger: Ledger) -> None:
    """Room for one call's bound: the client holds it, and the gateway admits the same call
    by taking that hold over (it refused the call: the client's hold counted against it).
    Held once from then on; a second call does not fit."""
    tenant, client, gateway = _gates(ledger, BOUND)
    try:
        span = _admit(client, tenant).id
        assert _held(ledger, tenant) == BOUND
        _admit(gateway, tenant, adopt=span)
        assert _held(ledger, tenant) == BOUND  # the gateway's lease, the client's row gone
        with pytest.raises(BudgetExceeded):
            _admit(gateway, tenant)
        with pytest.raises(BudgetExceeded):
            _admit(client, tenant)
    finally:
        client.close(give_back=False)
        gateway.close(give_back=False)


def _near(span: str) -> st.SearchStrategy[str]:
    swapped = [span[:i] + ("0" if span[i] != "0" else "1") + span[i + 1 :] for i in (0, 12, 25)]
    return st.sampled_from(
        [span.lower(), span[:-1], f"{span}0", f" {span}", *swapped, new_span_row_id()]
    )


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_other_call_takes_a_clients_hold(ledger: Ledger, data: st.DataObject) -> None:
    """The client's call holds the only room there is. Another call naming an id close to the
    client's span, or its very id but charged to another department, or for another model,
    takes nothing: it is refused, and the client's hold stays whole (taken, the client's call
    would run with nothing held while the other spent its room)."""
    tenant, client, gateway = _gates(ledger, BOUND)
    try:
        span = _admit(client, tenant).id
        named = data.draw(st.one_of(st.just(span), _near(span)), label="named")
        department = data.draw(st.sampled_from(["sales", "ops", "Sales"]), label="department")
        model = data.draw(st.sampled_from(["llama3.1:8b", "qwen2.5:7b", "llama3.1:8b "]))
        assume((named, department, model) != (span, "sales", "llama3.1:8b"))
        with pytest.raises(BudgetExceeded):
            _admit(gateway, tenant, adopt=named, department=department, model=model)
        assert _held(ledger, tenant) == BOUND
        _admit(gateway, tenant, adopt=span)  # the call itself still can
    finally:
        client.close(give_back=False)
        gateway.close(give_back=False)


def test_an_expired_hold_taken_over_frees_nothing(ledger: Ledger) -> None:
    """A client killed mid-call leaves its hold to expire: taking it over after that gives no
    room it did not give already, and takes nothing from another client's live hold."""
    tenant, dead, gateway = _gates(ledger, BOUND, ttl=timedelta(seconds=1))
    live = BudgetGate(ledger, tz=UTC, lease_share=0.0)
    try:
        span = _admit(dead, tenant).id
        dead.close(give_back=False)
        if ledger.engine.dialect.name == "postgresql":
            time.sleep(1.2)  # expiry by the database server's clock
            later = NOW
        else:
            later = NOW + timedelta(seconds=2)
        _admit(live, tenant, now=later)  # the expired hold's room, taken by another call
        with pytest.raises(BudgetExceeded):
            _admit(gateway, tenant, adopt=span, now=later)
    finally:
        live.close(give_back=False)
        gateway.close(give_back=False)


def test_the_client_gives_back_a_hold_the_gateway_took_and_its_other_calls_stay_held(
    ledger: Ledger,
) -> None:
    """The client gives its hold back once the gateway's answer names its ledger: the hold is
    the gateway's by then, so that frees nothing; the client's other call in flight stays
    held by its own row, and the budget stays full until a call ends."""
    tenant, client, gateway = _gates(ledger, 2 * BOUND)
    try:
        first, second = _admit(client, tenant), _admit(client, tenant)
        assert len(client._leases) == 2  # a row each
        _admit(gateway, tenant, adopt=first.id)
        client.ended(first, 0)
        client.settle(first)
        assert len(client._leases) == 1
        assert _held(ledger, tenant) == 2 * BOUND  # the gateway's call, and the second
        for gate in (client, gateway):
            with pytest.raises(BudgetExceeded):
                _admit(gate, tenant)
        client.ended(second, 0)
        client.settle(second)
        assert _held(ledger, tenant) == BOUND
        _admit(client, tenant)
    finally:
        client.close(give_back=False)
        gateway.close(give_back=False)


def test_a_long_call_keeps_being_held_once(ledger: Ledger) -> None:
    """A call runs past half a lease row's life (a long reply): the client's lease keeper
    renews its rows. The row the gateway took over is the gateway's hold now: written again,
    the call was held twice for the rest of its run (room for one more call refused)."""
    mono = [0.0]
    tenant, _, gateway = _gates(ledger, 2 * BOUND)
    client = BudgetGate(ledger, tz=UTC, lease_share=0.0, clock=lambda: mono[0])
    try:
        call = _admit(client, tenant)
        _admit(gateway, tenant, adopt=call.id)
        later = NOW + timedelta(minutes=8)
        mono[0] += 8 * 60
        with client._lock:
            client._maintain(later)
        assert _held(ledger, tenant) == BOUND
        _admit(client, tenant, now=later)  # the room left, exactly
    finally:
        client.close(give_back=False)
        gateway.close(give_back=False)
