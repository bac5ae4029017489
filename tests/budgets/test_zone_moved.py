"""Two gateways on one ledger whose budget periods are cut in different zones for a moment:
``ometer db rollup --zone`` moved the ledger's midnights, and a gateway reads the zone again
only with its budgets (every 5 s). Each keyed its leases to its own period start, saw none
of the other's, and both admitted calls in flight up to the whole hard limit: 200 of 100.

Each renewal now counts, beside the rows of its own period start, every live lease of the
budget and tenant keyed to a start strictly between the period before's and this one's end
(none, but for a zone moved: this zone's periods begin at neither)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.budgets import BudgetGate, Estimate
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.records import Budget, new_span_row_id

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNIT = 1_000_000


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize(
    "zones", [("UTC", "Pacific/Kiritimati"), ("Europe/Berlin", "America/Los_Angeles")]
)
def test_two_gateways_cutting_periods_in_two_zones_admit_no_more_than_the_limit(
    db_url: str, period: str, zones: tuple[str, str]
) -> None:
    ledger = Ledger(db_url)
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period=period, limit=100 * UNIT, currency="USD")
    )
    gates = [
        BudgetGate(ledger, tz=ZoneInfo(zone), lease_share=0.25, ttl=3600, clock=lambda: 0.0)
        for zone in zones
    ]
    admitted = [0, 0]
    for _ in range(150):  # calls in flight, none ending: each holds its bound of 1
        for g, gate in enumerate(gates):
            try:
                gate.admit(
                    call_id=new_span_row_id(), tenant="acme", department="sales",
                    estimate=Estimate(UNIT, "USD"), now=NOV,
                )  # fmt: skip
            except BudgetExceeded:
                continue
            admitted[g] += 1
    assert sum(admitted) == 100
    assert all(admitted)  # both admit: each saw the room the other left
    for gate in gates:
        gate.close(give_back=False)
    ledger.dispose()


ZONES = ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Berlin", "Asia/Kathmandu"]


@settings(max_examples=25, deadline=None)
@given(
    zones=st.lists(st.sampled_from(ZONES), min_size=2, max_size=2, unique=True),
    period=st.sampled_from(["day", "week", "month"]),
    # Any moment, the periods' edges most: a day's last and first hours in one zone or other.
    now=st.datetimes(
        min_value=datetime(2026, 10, 30), max_value=datetime(2026, 11, 3), timezones=st.just(UTC)
    ),
    bounds=st.lists(st.integers(1, 7), min_size=1, max_size=40),
)
def test_gates_in_any_two_zones_together_admit_no_more_than_the_limit(
    tmp_path_factory: pytest.TempPathFactory,
    zones: list[str],
    period: str,
    now: datetime,
    bounds: list[int],
) -> None:
    """Calls in flight only (none ends): whatever the two gates' periods, the bounds they
    admitted together fit the limit (near an edge, one gate may be in the next period while
    the other is not: each then counts the other's leases, refusing more, never less)."""
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('zones')}/l.db")
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period=period, limit=20 * UNIT, currency="USD")
    )
    gates = [
        BudgetGate(ledger, tz=ZoneInfo(zone), lease_share=0.25, ttl=3600, clock=lambda: 0.0)
        for zone in zones
    ]
    admitted = 0
    for i, bound in enumerate(bounds):
        try:
            gates[i % 2].admit(
                call_id=new_span_row_id(), tenant="acme", department="sales",
                estimate=Estimate(bound * UNIT, "USD"), now=now,
            )  # fmt: skip
        except BudgetExceeded:
            continue
        admitted += bound
    assert admitted <= 20
    for gate in gates:
        gate.close(give_back=False)
    ledger.dispose()
