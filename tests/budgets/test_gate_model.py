"""The gate against a model: gateways and CLI runs on one ledger, calls admitted, settled,
spooled and drained, gateways killed, budgets edited, the clock run across midnights and the
month's end in the ledger's zone. At every step no budget's period may hold more than its
limit: the spend recorded in it, plus the costs of its spans not yet in the ledger, plus the
bounds of its calls still running.

The spend recorded is the model's own book of the spans it had the ledger record (an exact
oracle: each step's check reads no database), and at the end of each run the ledger is held
to that book once, every span and every budget's period, from the spans and from the rollups
the gate reads. The check after every step read each period's spend from the raw spans: a third
of the test's CPU on SQLite, and half the statements it sent on either backend."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from ollama_meter.budgets import Budget, BudgetGate, Estimate
from ollama_meter.budgets._leases import Reservation
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger, SpanFilter, raw_spans
from ollama_meter.periods import Window, current_period
from ollama_meter.records import SpanRecord, new_span_row_id
from tests.factories import make_span

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 10, 31, 21, 30, tzinfo=UTC)  # 90 minutes before November in Berlin
DEPARTMENTS = ("sales", "ops")
_tenants = (f"m{n}" for n in itertools.count())


@dataclass
class Call:
    gate: int
    reservation: Reservation
    bound: int
    department: str
    started: datetime
    span: SpanRecord | None = None
    """Its span, spooled: settled with its cost, not in the ledger yet."""


LEDGER: list[Ledger] = []


class Budgets(RuleBasedStateMachine):
    calls = Bundle("calls")
    spooled = Bundle("spooled")

    @initialize(
        monthly=st.integers(1_000, 50_000),
        daily=st.integers(1_000, 50_000),
        shares=st.lists(st.sampled_from([0.0, 0.25]), min_size=2, max_size=4),
    )
    def start(self, monthly: int, daily: int, shares: list[float]) -> None:
        self.ledger = LEDGER[0]
        self.tenant = next(_tenants)
        self.now = START
        self.mono = 0.0
        self.budgets = [
            self.ledger.save_budget(
                Budget(
                    tenant=self.tenant,
                    department="sales",
                    period="month",
                    limit=monthly,
                    currency="USD",
                )
            ),
            self.ledger.save_budget(
                Budget(
                    tenant=self.tenant, department=None, period="day", limit=daily, currency="USD"
                )
            ),
        ]
        self.gates = [
            BudgetGate(self.ledger, tz=BERLIN, lease_share=s, ttl=0, clock=lambda: self.mono)
            for s in shares
        ]
        self.dead: set[int] = set()
        self.running: list[Call] = []
        self.waiting: list[Call] = []
        self.committed: list[Call] = []
        """Calls whose spans are in the ledger, not settled yet (a commit, then its settle)."""
        self.floor: dict[tuple[int | None, datetime], int] = {}
        """What a budget's period held when its limit was lowered: the calls in flight then
        were admitted under the old limit, and no call admitted since may add to it."""
        self.ids = itertools.count()
        self.handed: list[Call] = []
        """Client calls a gateway admitted on their holds: the client gives its hold back once
        the gateway's answer names the ledger (any time later)."""
        self.book: dict[str, SpanRecord] = {}
        """The spans the ledger was given to record, by id: the spend every check reads."""

    def teardown(self) -> None:
        for gate in getattr(self, "gates", []):
            gate.close(give_back=False)
        if hasattr(self, "book"):
            self._ledger_holds_the_book()

    def _record(self, spans: list[SpanRecord]) -> None:
        self.ledger.record(spans)
        for span in spans:
            self.book.setdefault(span.id, span)  # recording one again changes nothing

    def _spent(self, budget: Budget, window: Window) -> int:
        """What the spans recorded spent in ``window`` under ``budget``, by the book."""
        return sum(
            span.cost_total
            for span in self.book.values()
            if window.start <= span.started_at < window.end
            and budget.covers(self.tenant, span.department)
        )

    def _ledger_holds_the_book(self) -> None:
        """The ledger holds the spans of the book, and each budget's spend in every period a
        span or the model's clock is in is the book's: read from the spans, and from the
        rollups (which the gate reads)."""
        windows = {
            (budget.id, window.start): (budget, window)
            for budget in self.budgets
            for at in [self.now, *(span.started_at for span in self.book.values())]
            for window in [current_period(budget.period, tz=BERLIN, now=at)]
        }.values()
        expected = [self._spent(budget, window) for budget, window in windows]
        with self.ledger.budget_snapshot() as store:
            rolled = [store.spent(b, self.tenant, w.start, w.end) for b, w in windows]
        with raw_spans(), self.ledger.budget_snapshot() as store:
            raw = [store.spent(b, self.tenant, w.start, w.end) for b, w in windows]
        assert self.ledger.count(SpanFilter(tenant=self.tenant)) == len(self.book)
        assert (raw, rolled) == (expected, expected), [w.label for _, w in windows]

    @rule(
        target=calls,
        gate=st.integers(0, 3),
        bound=st.integers(0, 20_000),
        department=st.sampled_from(DEPARTMENTS),
    )
    def admit(self, gate: int, bound: int, department: str) -> Call | None:
        gate %= len(self.gates)
        if gate in self.dead:
            return None
        call_id = new_span_row_id()  # a call is admitted by its span's id, as the meter does
        try:
            reservation = self.gates[gate].admit(
                call_id=call_id,
                tenant=self.tenant,
                department=department,
                estimate=Estimate(bound, "USD"),
                now=self.now,
            )
        except BudgetExceeded:
            return None
        assert reservation is not None
        call = Call(gate, reservation, bound, department, self.now)
        self.running.append(call)
        return call

    @rule(target=calls, call=consumes(calls), gate=st.integers(0, 3), forged=st.booleans())
    def through_a_gateway(self, call: Call | None, gate: int, forged: bool) -> Call | None:
        """A client's call (a CLI run's) reaches a gateway on the ledger, which admits it on the
        client's own hold, taken over: the one call, held once. Or another caller names an id
        close to the client's (``forged``): admitted, if at all, on room of its own, the
        client's call still running on its hold."""
        gate %= len(self.gates)
        if call is None or call not in self.running or gate in self.dead:
            return call
        if self.gates[gate].lease_share == 0 or self.gates[call.gate].lease_share != 0:
            return call
        named = call.reservation.id
        if forged:
            named = named[:-1] + ("0" if named[-1] != "0" else "1")
        try:
            reservation = self.gates[gate].admit(
                call_id=new_span_row_id(),
                tenant=self.tenant,
                department=call.department,
                estimate=Estimate(call.bound, "USD"),
                now=self.now,
                adopt=named,
            )
        except BudgetExceeded:
            return call
        assert reservation is not None
        admitted = Call(gate, reservation, call.bound, call.department, self.now)
        self.running.append(admitted)
        if not forged:
            self.running.remove(call)
            self.handed.append(call)
        return admitted

    @rule(first=st.booleans())
    def hand_back(self, first: bool) -> None:
        """The client gives back the hold of a call the gateway admitted on it."""
        if self.handed:
            call = self.handed.pop(0 if first else -1)
            if call.gate not in self.dead:
                self.gates[call.gate].ended(call.reservation, 0)
                self.gates[call.gate].settle(call.reservation)

    def _span(self, call: Call, cost: int) -> SpanRecord:
        return make_span(
            id=call.reservation.id,
            started_at=call.started,
            tenant=self.tenant,
            department=call.department,
            cost_total=cost,
        )

    @rule(
        call=consumes(calls),
        percent=st.integers(0, 100),
        spool=st.booleans(),
        settle_later=st.booleans(),
    )
    def finish(self, call: Call | None, percent: int, spool: bool, settle_later: bool) -> None:
        if call is None or call not in self.running:
            return
        self.running.remove(call)
        cost = call.bound * percent // 100
        span = self._span(call, cost)
        gate = self.gates[call.gate]
        gate.ended(call.reservation, cost)
        if spool:
            call.span = span
            self.waiting.append(call)
            gate.settle(call.reservation, recorded=False)
        else:
            self._record([span])
            if settle_later:  # as the write-behind thread does: other calls come in between
                self.committed.append(call)
            else:
                gate.settle(call.reservation, recorded=True)

    @rule(first=st.booleans())
    def settle(self, first: bool) -> None:
        """A committed call's hold is settled."""
        if self.committed:
            call = self.committed.pop(0 if first else -1)
            self.gates[call.gate].settle(call.reservation, recorded=True)

    @rule()
    def drain(self) -> None:
        """The spool drains (any process's)."""
        spans = [c.span for c in self.waiting if c.span is not None]
        self.waiting.clear()
        if spans:
            self._record(spans)

    @rule(gate=st.integers(0, 3))
    def kill(self, gate: int) -> None:
        """kill -9: its calls' spans are recorded as they were (by the recovery of its
        journal, or their commits), its leases left to expire."""
        gate %= len(self.gates)
        if gate in self.dead:
            return
        self.dead.add(gate)
        self.killed = self.now
        self.gates[gate].close(give_back=False)
        for call in [c for c in self.running if c.gate == gate]:
            self.running.remove(call)
            self._record([self._span(call, call.bound)])
        for call in [c for c in self.waiting if c.gate == gate]:
            self.waiting.remove(call)
            assert call.span is not None
            self._record([call.span])
        self.committed = [c for c in self.committed if c.gate != gate]

    @rule(minutes=st.sampled_from([1, 7, 20, 45, 180, 24 * 60]))
    def tick(self, minutes: int) -> None:
        """Time passes; each live gate's lease keeper looks every few minutes (its thread
        does every 30 s), so leases with calls in flight are renewed before they expire."""
        while minutes > 0:
            step = min(minutes, 5)
            minutes -= step
            self.now += timedelta(minutes=step)
            self.mono += step * 60.0
            for gate in range(len(self.gates)):
                self.keep(gate)

    @rule(gate=st.integers(0, 3))
    def keep(self, gate: int) -> None:
        """The lease keeper's round."""
        gate %= len(self.gates)
        if gate not in self.dead:
            with self.gates[gate]._lock:
                self.gates[gate]._maintain(self.now)

    @rule(gate=st.integers(0, 3), department=st.sampled_from(DEPARTMENTS))
    def exact_fit(self, gate: int, department: str) -> None:
        """With no call in flight and the leases idle a while, exactly the room the budgets
        leave is admitted, by any live gate: nothing stays stranded (no wrong refusal). Its
        own calls committed but not settled yet count once, in the spend."""
        gate = self.committed[0].gate if self.committed else gate % len(self.gates)
        if self.running or self.waiting or self.handed or gate in self.dead:
            return
        if any(c.gate != gate for c in self.committed):
            return  # another gate's lease holds a slice while its calls settle
        self.tick(1)  # idle for a minute: every live gate's keeper gave its leases back
        if self.dead and (
            self.ledger.engine.dialect.name == "postgresql"
            or self.now - self.killed < timedelta(minutes=16)
        ):
            return  # a dead gate's rows hold until they expire
        room = min(
            budget.limit
            - self._spent(budget, current_period(budget.period, tz=BERLIN, now=self.now))
            for budget in self.budgets
            if budget.covers(self.tenant, department)
        )
        if room < 0:
            return  # a lowered limit below the spend
        admit = self.gates[gate].admit

        def ask(amount: int) -> Reservation | None:
            return admit(
                call_id=f"c{next(self.ids)}",
                tenant=self.tenant,
                department=department,
                estimate=Estimate(amount, "USD"),
                now=self.now,
            )

        with pytest.raises(BudgetExceeded):
            ask(room + 1)
        if room == 0:  # a spent budget refuses even a call that costs nothing
            with pytest.raises(BudgetExceeded):
                ask(0)
            return
        reservation = ask(room)
        assert reservation is not None
        self.gates[gate].ended(reservation, 0)
        self.gates[gate].settle(reservation)

    @rule(which=st.integers(0, 1), percent=st.integers(100, 300))
    def raise_limit(self, which: int, percent: int) -> None:
        old = self.budgets[which]
        self.budgets[which] = self.ledger.save_budget(
            replace(old, id=None, limit=old.limit * percent // 100)
        )
        assert self.budgets[which].id == old.id

    @rule(which=st.integers(0, 1), percent=st.integers(10, 99))
    def lower_limit(self, which: int, percent: int) -> None:
        old = self.budgets[which]
        for window, level in self._levels(old):
            key = (old.id, window.start)
            self.floor[key] = max(self.floor.get(key, 0), level)
        self.budgets[which] = self.ledger.save_budget(
            replace(old, id=None, limit=max(1, old.limit * percent // 100))
        )

    @rule(which=st.integers(0, 1))
    def remove_and_set_again(self, which: int) -> None:
        """`budget rm`, then `budget set` as it was, calls in flight: the same budget, which
        holds them (test_removed_holds.py)."""
        old = self.budgets[which]
        self.ledger.remove_budget(old.id or 0)
        self.budgets[which] = self.ledger.save_budget(replace(old, id=None))

    def _levels(self, budget: Budget) -> Iterator[tuple[Window, int]]:
        """Each period's spend, spans still spooled and calls in flight."""
        windows = {
            current_period(budget.period, tz=BERLIN, now=c.started)
            for c in [*self.running, *self.waiting]
        } | {current_period(budget.period, tz=BERLIN, now=self.now)}
        for window in windows:
            spent = self._spent(budget, window)
            covered = [
                c
                for c in [*self.running, *self.waiting]
                if window.start <= c.started < window.end
                and budget.covers(self.tenant, c.department)
            ]
            held = sum(c.bound if c.span is None else c.span.cost_total for c in covered)
            yield window, spent + held

    @invariant()
    def within_limits(self) -> None:
        if not hasattr(self, "ledger"):
            return
        levels = [(b, w, level) for b in self.budgets for w, level in self._levels(b)]
        for budget, window, level in levels:
            floor = self.floor.get((budget.id, window.start), 0)
            assert level <= max(budget.limit, floor), (budget, window.label, level, floor)


def test_no_sequence_of_calls_kills_and_midnights_spends_past_a_limit(db_url: str) -> None:
    """On PostgreSQL the leases expire by the server's clock, which the model does not move:
    a dead gate's rows hold for the whole test there."""
    LEDGER[:] = [Ledger(db_url)]
    Budgets.TestCase.settings = settings(
        max_examples=int(os.environ.get("MODEL_EXAMPLES", "50")),
        stateful_step_count=30,
        deadline=None,
    )
    Budgets.TestCase().runTest()
