"""Rate limits in process, on a clock the test moves: Retry-After is exact, scopes add up."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.gateway._rates import OverLimit, RateLimits
from ollama_meter.records import Limit
from tests.factories import make_span

S = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 1000 * S

    def __call__(self) -> int:
        return self.now


def limits(*given: Limit) -> tuple[RateLimits, Clock]:
    clock = Clock()
    rates = RateLimits(clock=clock)
    rates.load(given)
    return rates, clock


def test_rpm_refuses_the_call_over_and_says_exactly_when_to_come_back() -> None:
    rates, clock = limits(Limit("acme", "sales", rpm=3))
    for offset in (0, 10, 20):
        clock.now = 1000 * S + offset * S
        rates.admit("acme", "sales")
    clock.now = 1000 * S + 25 * S
    with pytest.raises(OverLimit) as refused:
        rates.admit("acme", "sales")
    assert refused.value.retry_after == 35  # the call at 0 s leaves the window at 60 s
    assert str(refused.value) == (
        "acme/sales is over its limit of 3 calls a minute; try again in 35 s "
        "(see `ometer limit list`)"
    )
    clock.now = 1000 * S + 60 * S - 1
    with pytest.raises(OverLimit) as still:
        rates.admit("acme", "sales")
    assert still.value.retry_after == 1
    clock.now = 1000 * S + 60 * S
    rates.admit("acme", "sales")  # exactly when it said
    rates.admit("acme", "support")  # another department is not limited


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(1, 5),
    gaps=st.lists(st.integers(0, 30 * S), min_size=1, max_size=30),
)
def test_after_retry_after_the_call_is_admitted_and_a_second_earlier_it_is_not(
    rpm: int, gaps: list[int]
) -> None:
    rates, clock = limits(Limit("acme", "sales", rpm=rpm))
    for gap in gaps:
        clock.now += gap
        try:
            rates.admit("acme", "sales")
        except OverLimit as refused:
            wait, before = refused.retry_after, clock.now
            assert 1 <= wait <= 60
            if wait > 1:
                clock.now = before + (wait - 1) * S
                with pytest.raises(OverLimit):
                    rates.admit("acme", "sales")
            clock.now = before + wait * S
            rates.admit("acme", "sales")


def test_tpm_counts_the_tokens_of_calls_that_ended() -> None:
    rates, clock = limits(Limit("acme", None, tpm=1000))  # the whole tenant
    rates.admit("acme", "sales")
    rates.on_end(make_span(tenant="acme", department="sales", input_tokens=600, output_tokens=0))
    clock.now += 5 * S
    rates.admit("acme", "hr")
    rates.on_end(make_span(tenant="acme", department="hr", input_tokens=300, output_tokens=150))
    clock.now += 10 * S
    with pytest.raises(OverLimit) as refused:
        rates.admit("acme", "support")
    # 1,050 tokens at 15 s: below 1,000 again once the first 600 leave, at 60 s.
    assert refused.value.retry_after == 45
    assert "acme (all) is over its limit of 1,000 tokens a minute" in str(refused.value)
    rates.admit("globex", "sales")


def test_a_key_has_its_own_limits_on_top_of_its_departments() -> None:
    rates, _ = limits(Limit("acme", "sales", rpm=10), Limit("acme", "sales", key_id=7, rpm=1))
    rates.admit("acme", "sales", 7)
    with pytest.raises(OverLimit) as refused:
        rates.admit("acme", "sales", 7)
    assert str(refused.value).startswith("key 7 (acme/sales) is over its limit of 1 calls")
    for _ in range(9):
        rates.admit("acme", "sales", 8)  # the department's other callers: its own 10
    with pytest.raises(OverLimit):
        rates.admit("acme", "sales", 8)


def test_a_refused_call_counts_against_nothing() -> None:
    rates, _ = limits(Limit("acme", None, rpm=1), Limit("acme", "sales", rpm=5))
    rates.admit("acme", "sales")
    for _ in range(3):
        with pytest.raises(OverLimit):
            rates.admit("acme", "sales")
    rates.load([Limit("acme", "sales", rpm=5)])  # the tenant's limit is dropped
    for _ in range(4):  # the department had one call counted, not four
        rates.admit("acme", "sales")
    with pytest.raises(OverLimit):
        rates.admit("acme", "sales")


def test_weight_and_concurrency_shape_the_queue() -> None:
    rates, _ = limits(
        Limit("acme", None, concurrency=4, weight=2),
        Limit("acme", "sales", concurrency=1, weight=5),
        Limit("acme", "sales", key_id=3, concurrency=2),
    )
    sales = rates.admit("acme", "sales", 3)
    assert (sales.flow, sales.weight) == (("acme", "sales"), 5)
    assert [(c.name, c.limit) for c in sales.caps] == [
        ("acme (all)", 4),
        ("acme/sales", 1),
        ("key 3 (acme/sales)", 2),
    ]
    hr = rates.admit("acme", "hr")
    assert hr.weight == 2 and hr.caps[0] == sales.caps[0]  # the tenant's places, shared
    assert [(c.name, c.limit) for c in hr.caps] == [("acme (all)", 4), ("acme/hr", None)]
    assert rates.admit("globex", "x").weight == 1
    sales.caps[1].in_use = 1
    rates.load([Limit("acme", "sales", concurrency=3)])  # raised while a call holds a place
    assert (sales.caps[1].limit, sales.caps[1].in_use) == (3, 1)
    later = rates.admit("acme", "sales")
    assert later.caps == sales.caps[:2] and later.caps[1].in_use == 1
    assert (later.caps[0].limit, later.caps[0].in_use) == (None, 0)  # the tenant's is gone
    sales.caps[1].in_use = 0  # none running: the department leaves no count behind
    assert rates.running() == {}


def test_calls_admitted_while_no_limit_is_in_force_count_once_one_is_set() -> None:
    """With no limit anywhere a call is admitted without the windows' work, and still holds
    its places: a concurrency limit set while it runs counts it, an rpm limit counts from then."""
    rates = RateLimits()
    early = rates.admit("acme", "sales", 3, tokens=10**9)
    assert (early.flow, early.weight, early.prompt) == (("acme", "sales"), 1, [])
    assert [c.name for c in early.caps] == ["acme (all)", "acme/sales", "key 3 (acme/sales)"]
    early.refund()  # nothing was counted: nothing to give back
    early.caps[1].in_use = 1
    rates.load([Limit("acme", "sales", concurrency=1, rpm=1)])
    later = rates.admit("acme", "sales")
    assert later.caps[1] == early.caps[1] and not later.caps[1].free
    with pytest.raises(OverLimit):
        rates.admit("acme", "sales")


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    rates, clock = limits(Limit("acme", "sales", rpm=1))
    rates.admit("acme", "sales")
    clock.now += S // 3
    with pytest.raises(OverLimit) as refused:
        rates.admit("acme", "sales")
    assert refused.value.retry_after == math.ceil(60 - 1 / 3)


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(1, 4),
    calls=st.lists(st.tuples(st.integers(0, 40 * S), st.booleans()), min_size=1, max_size=25),
)
@example(rpm=2, calls=[(0, False), (0, True), (0, False), (0, False)])  # refunds in one instant
def test_a_refunded_call_is_as_if_it_never_came(rpm: int, calls: list[tuple[int, bool]]) -> None:
    rates, clock = limits(Limit("acme", "sales", rpm=rpm))
    kept: list[int] = []  # when the calls that count were admitted
    for gap, turned_away in calls:
        clock.now += gap
        recent = [t for t in kept if t > clock.now - 60 * S]
        if len(recent) >= rpm:
            with pytest.raises(OverLimit) as over:
                rates.admit("acme", "sales")
            assert over.value.retry_after == math.ceil((recent[-rpm] + 60 * S - clock.now) / S)
            continue
        admission = rates.admit("acme", "sales")
        if turned_away:  # a budget or a full queue refused it after all
            admission.refund()
            admission.refund()  # twice is once
        else:
            kept.append(clock.now)


_TPM = 1_000
_STEPS = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 40 * S), st.integers(0, 1_200)),
    st.tuples(st.just("end"), st.integers(0, 30), st.integers(0, 900)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEPS, min_size=1, max_size=40))
def test_under_a_tpm_a_call_is_let_in_exactly_when_its_prompt_fits_the_minute(
    steps: list[tuple[str, int, int]],
) -> None:
    """Calls running at once each count their prompt when admitted; when one ends its own
    tokens take the estimate's place, and a call turned away counts nothing. A model of the
    minute (every count, given back by zeroing it) says which calls fit: exactly those get in."""
    rates, clock = limits(Limit("acme", "sales", tpm=_TPM))
    counts: list[list[int]] = []  # the model: [moment, tokens] of each count
    running: list[tuple[str, list[int], object]] = []  # span id, its prompt's count, admission

    def minute() -> int:
        return sum(n for moment, n in counts if moment > clock.now - 60 * S)

    for kind, number, tokens in steps:
        if kind == "admit":
            clock.now += number
            fits = tokens <= _TPM and minute() + max(tokens, 1) <= _TPM
            if not fits:
                with pytest.raises(OverLimit) as over:
                    rates.admit("acme", "sales", tokens=tokens)
                final = tokens > _TPM
                assert ("no wait would let it in" in str(over.value)) == final
                assert (over.value.retry_after is None) if final else over.value.retry_after >= 1
                continue
            admission = rates.admit("acme", "sales", tokens=tokens)  # it fits: it gets in
            span = make_span(input_tokens=0, output_tokens=0)
            rates.bind(span.id, None, admission)
            count = [clock.now, tokens]
            counts.append(count)
            running.append((span.id, count, admission))
        elif running:
            span_id, count, admission = running.pop(number % len(running))
            count[1] = 0  # its estimate is given back either way
            if kind == "refund":
                admission.refund()  # type: ignore[attr-defined]
                admission.refund()  # type: ignore[attr-defined]  # twice is once
            else:
                rates.on_end(make_span(id=span_id, input_tokens=tokens, output_tokens=0))
                counts.append([clock.now, tokens])


def test_one_prompt_larger_than_the_tpm_is_refused_however_empty_the_minute() -> None:
    rates, _ = limits(Limit("acme", "sales", tpm=1_000))
    with pytest.raises(OverLimit) as refused:
        rates.admit("acme", "sales", tokens=1_001)
    assert str(refused.value) == (
        "this call's prompt is about 1,001 tokens, more than acme/sales's limit of 1,000 tokens "
        "a minute, so no wait would let it in: shorten it, or raise the limit (`ometer limit set`)"
    )
    rates.admit("acme", "sales", tokens=1_000)  # exactly the limit fits an empty minute
    with pytest.raises(OverLimit):
        rates.admit("acme", "sales", tokens=0)  # and nothing more this minute


_SCOPES = [Limit("acme", None, rpm=5, tpm=3_000), Limit("acme", "sales", rpm=3, tpm=1_000)]
_CALLS = st.one_of(
    st.tuples(
        st.just("admit"),
        st.integers(0, 30 * S),
        st.integers(0, 1_100),
        st.integers(0, 5),
        st.booleans(),
    ),
    st.tuples(st.just("end"), st.integers(0, 30), st.integers(0, 2_000), st.just(0), st.just(0)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_CALLS, min_size=1, max_size=40))
def test_retry_after_is_the_first_whole_second_every_limit_lets_the_call_in(
    steps: list[tuple[str, int, int, int, bool]],
) -> None:
    """A department's and its tenant's rpm and tpm at once, prompts with pictures, calls that
    end with other counts than their estimate and calls turned away: a refused call is told a
    Retry-After of at least 1 s after which, the minute left as it was, every limit lets it in,
    and a second earlier one does not. The tenant's limits count its other departments too."""
    rates, clock = limits(*_SCOPES)
    running: list[tuple[str, str, object]] = []
    for kind, number, tokens, images, other in steps:
        department = "hr" if other else "sales"
        if kind == "admit":
            clock.now += number
            try:
                admission = rates.admit("acme", department, tokens=tokens, images=images)
            except OverLimit as over:
                if over.retry_after is None:
                    assert department == "sales" and tokens > 1_000
                    continue
                wait, before = over.retry_after, clock.now
                assert 1 <= wait <= 60
                clock.now = before + (wait - 1) * S
                if wait > 1:
                    with pytest.raises(OverLimit):
                        rates.admit("acme", department, tokens=tokens, images=images)
                clock.now = before + wait * S
                admission = rates.admit("acme", department, tokens=tokens, images=images)
            span = make_span(tenant="acme", department=department, input_tokens=0)
            rates.bind(span.id, None, admission)
            running.append((span.id, department, admission))
        elif running:
            span_id, department, admission = running.pop(number % len(running))
            if kind == "refund":
                admission.refund()  # type: ignore[attr-defined]
            else:
                rates.on_end(
                    make_span(id=span_id, tenant="acme", department="sales", input_tokens=tokens)
                )
