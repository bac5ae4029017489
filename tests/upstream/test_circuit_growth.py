"""A model's circuit remembers whose calls failed in its run only as far as it reads it."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ollama_meter.errors import CircuitOpen, UpstreamServerError
from ollama_meter.upstream import CircuitBreaker

BOOM = UpstreamServerError("boom", status_code=500)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_model_failing_for_ever_keeps_two_of_its_callers_not_every_one() -> None:
    """A model whose server fails every call is tried once a minute, by whoever calls then:
    where keys are not required callers name their own department, and each trial's caller
    was added to the circuit's set, a name a minute for as long as the model failed."""
    clock = Clock()
    breaker = CircuitBreaker("http://gpu-1:11434", threshold=1, reset_after=60, clock=clock)
    for n in range(2_000):
        clock.now += 60  # the circuit's trial is due
        breaker.settle(breaker.admit("m", f"acme/d{n}"), BOOM)
    (circuit,) = breaker._models.values()
    assert len(circuit.callers) <= 2
    assert breaker.state("m") == "open"  # the run of many callers still opens it for all


@settings(max_examples=150, deadline=None)
@given(callers=st.lists(st.sampled_from(["", "a/x", "a/y", "b/z"]), min_size=1, max_size=12))
def test_whether_a_run_is_one_callers_is_told_as_before(callers: list[str]) -> None:
    """A run of failures opens the model's circuit for everyone once two callers (or a call
    naming none) failed in it; one caller's run alone never does."""
    breaker = CircuitBreaker("http://gpu-1:11434", threshold=len(callers), reset_after=60)
    for caller in callers:
        try:
            ticket = breaker.admit("m", caller)
        except CircuitOpen:
            return  # the caller's own circuit: nothing here to compare
        breaker.settle(ticket, BOOM)
    many = len(set(callers)) > 1 or "" in callers
    assert breaker.state("m") == ("open" if many else "closed")
