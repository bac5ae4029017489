"""Half-open trials against a reference, with a moving clock, calls in flight at once, and callers.

Each circuit (the host's, the model's, each caller's own for the model) lets one trial through
once its wait is over; the trial's outcome, and only its, ends the trial: a call admitted
before the circuit opened that ends meanwhile does not, and a trial that ends in a way no
circuit counts (its caller hung up) ends its trial on every circuit it was the trial of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings, strategies as st

from ollama_meter.errors import CircuitOpen, UpstreamError
from ollama_meter.upstream import CircuitBreaker
from ollama_meter.upstream._resilience import Ticket
from tests.upstream.test_resilience import BOOM, HOST, OUTCOMES, Clock

THRESHOLD, RESET = 2, 10.0
CALLERS = ["", "acme/sales", "acme/support"]
_MODEL = frozenset({"timeout", "upstream_5xx", "rate_limited", "stream_error"})


@dataclass
class Rec:
    """The reference's circuit: plain data, nothing shared with the breaker's."""

    failures: int = 0
    opened_at: float | None = None
    trial: int | None = None  # the call it let through as its trial
    callers: set[str] = field(default_factory=set)


class Reference:
    def __init__(self) -> None:
        self.now = 0.0
        self.host = Rec()
        self.model: Rec | None = None
        self.own: dict[str, Rec] = {}

    def _state(self, rec: Rec) -> str:
        if rec.opened_at is None:
            return "closed"
        return "half_open" if self.now - rec.opened_at >= RESET else "open"

    def _recs(self, caller: str) -> list[Rec]:
        found = [self.host, self.model, self.own.get(caller) if caller else None]
        return [r for r in found if r is not None]

    def admit(self, call: int, caller: str) -> bool:
        recs = self._recs(caller)
        for rec in recs:
            state = self._state(rec)
            if state == "open" or (state == "half_open" and rec.trial is not None):
                return False
        own = self.own.get(caller) if caller else None
        suspect = own is not None and own.opened_at is not None  # its own circuit opened
        for rec in recs:
            if self._state(rec) == "half_open" and not (suspect and rec is self.model):
                rec.trial = call
        return True

    def _fail(self, rec: Rec, call: int, opens: bool = True) -> None:
        rec.failures += 1
        was_trial = rec.trial == call
        if was_trial:
            rec.trial = None
        if was_trial or (opens and rec.failures >= THRESHOLD):
            rec.opened_at = self.now

    def settle(self, call: int, caller: str, outcome: BaseException | None) -> None:
        if outcome is None:
            self.host, self.model = Rec(), None
            self.own.pop(caller, None)
            return
        sent = isinstance(outcome, UpstreamError) and outcome.reached_upstream
        kind = outcome.error_type if sent and isinstance(outcome, UpstreamError) else None
        if kind is not None and kind not in ("connection", "timeout"):
            self.host = Rec()
        if kind == "connection":
            self._fail(self.host, call)
        own = self.own.get(caller) if caller else None
        if kind in _MODEL and not (own is not None and own.opened_at is not None):
            self.model = self.model or Rec()
            self.model.callers.add(caller)
            many = len(self.model.callers) > 1 or "" in self.model.callers
            self._fail(self.model, call, opens=many)
        if kind in _MODEL and caller:
            self._fail(self.own.setdefault(caller, Rec()), call)
        for rec in self._recs(caller):
            if rec.trial == call:
                rec.trial = None


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(CALLERS)),
        st.tuples(st.just("settle"), st.integers(0, 7), OUTCOMES),
        st.tuples(st.just("tick"), st.sampled_from([4.0, 10.0])),
    ),
    max_size=80,
)


@settings(max_examples=800)
@given(STEPS)
def test_trials_with_a_moving_clock_and_calls_in_flight_match_the_reference(steps: list) -> None:
    clock = Clock()
    b = CircuitBreaker(HOST, threshold=THRESHOLD, reset_after=RESET, clock=clock)
    ref = Reference()
    flying: list[tuple[int, str, Ticket]] = []
    for n, step in enumerate(steps):
        if step[0] == "tick":
            clock.now = ref.now = clock.now + step[1]
        elif step[0] == "admit":
            caller = step[1]
            try:
                ticket = b.admit("m", caller)
            except CircuitOpen:
                assert not ref.admit(n, caller), (n, caller)
                continue
            assert ref.admit(n, caller), (n, caller)
            flying.append((n, caller, ticket))
        elif flying:
            call, caller, ticket = flying.pop(step[1] % len(flying))
            b.settle(ticket, step[2])
            ref.settle(call, caller, step[2])
        # No circuit waits for ever on a trial that is over.
        ended = {id(t) for *_, t in flying}
        circuits = [b._host, *b._models.values(), *b._callers.values()]
        assert all(c.trial is None or id(c.trial) in ended for c in circuits)
        assert b.state("m") == (ref._state(ref.model) if ref.model else "closed")
        for caller in CALLERS[1:]:
            own = ref.own.get(caller)
            assert b.state("m", caller) == (ref._state(own) if own else "closed")
        # Circuit by circuit: the same run, and a trial held by the same call.
        calls = {id(t): n for n, _, t in flying}
        pairs = [(b._host, ref.host), (b._models.get("m"), ref.model)]
        pairs += [(b._callers.get(("m", c)), ref.own.get(c)) for c in CALLERS[1:]]
        for circuit, rec in pairs:
            assert (circuit is None) == (rec is None)
            if circuit is not None and rec is not None:
                held = None if circuit.trial is None else calls[id(circuit.trial)]
                assert (circuit.failures, circuit.opened_at, held) == (
                    rec.failures,
                    rec.opened_at,
                    rec.trial,
                )


def test_a_trial_that_fails_after_a_stale_success_counts_as_one_failure_of_its_caller() -> None:
    """The model's circuit half-open, acme/sales's call its trial; a call sent before it opened
    succeeds meanwhile (the circuit is closed, and forgotten); then the trial fails. It was the
    trial of a circuit that is gone: on the one that is there it is one failure of one caller,
    which refuses nobody. Taken for a failed trial, it opened the model for every caller."""
    clock = Clock()
    b = CircuitBreaker(HOST, threshold=2, reset_after=RESET, clock=clock)
    stale = b.admit("m", "acme/ops")  # sent before the circuit opened
    b.settle(b.admit("m", "acme/sales"), BOOM)
    b.settle(b.admit("m", "acme/support"), BOOM)
    assert b.state("m") == "open"
    clock.now = RESET
    trial = b.admit("m", "acme/sales")
    b.settle(stale, None)
    b.settle(trial, BOOM)
    assert b.state("m") == "closed" and b.failures("m") == 1
    b.settle(b.admit("m", "acme/support"), None)


def test_one_trial_at_a_time_though_a_call_sent_before_the_circuit_opened_fails() -> None:
    """A call that was not the trial ends in failure while the trial runs: the trial is still
    the only one; it used to end the trial's hold, and let a second trial through."""
    clock = Clock()
    b = CircuitBreaker(HOST, threshold=2, reset_after=RESET, clock=clock)
    stale = b.admit("m")
    call_ = b.admit("m")
    b.settle(b.admit("m"), BOOM)
    b.settle(call_, BOOM)
    clock.now = RESET
    trial = b.admit("m")
    b.settle(stale, BOOM)  # re-opens the circuit: its wait starts again
    clock.now = 2 * RESET
    try:
        second = b.admit("m")
    except CircuitOpen:
        second = None
    assert second is None  # the first trial still runs
    b.settle(trial, None)
    assert b.state("m") == "closed"


def test_one_caller_cannot_keep_the_models_circuit_open_with_its_own_trials() -> None:
    """The model's circuit opened (sales' and support's failures); sales calls again and again,
    its requests failing as its own do. Let through each minute as the trial of the model's
    circuit and of its own at once, it re-opened both each time: support was refused the
    model for as long as sales kept calling. A call let through as its own circuit's trial
    speaks for its caller, not for the model: the model's trial is another caller's call."""
    clock = Clock()
    b = CircuitBreaker(HOST, threshold=3, reset_after=RESET, clock=clock)
    for caller in ("acme/sales", "acme/support", "acme/sales"):
        b.settle(b.admit("m", caller), BOOM)
    assert b.state("m") == "open"
    for _ in range(5):  # sales is always first when a minute is over
        clock.now += RESET
        b.settle(b.admit("m", "acme/sales"), BOOM)
    assert b.state("m", "acme/sales") == "open"
    trial = b.admit("m", "acme/support")  # the model's trial: support's call, which answers
    b.settle(trial, None)
    assert b.state("m") == "closed" and b.state("m", "acme/sales") == "open"
