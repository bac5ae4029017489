"""The one retry and breaker policy: circuits per host and per (host, model), a call counts once."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator

import pytest
from hypothesis import given, strategies as st

from ollama_meter.errors import (
    CircuitOpen,
    ModelNotFound,
    RateLimited,
    StreamError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from ollama_meter.meter import Attribution, Meter
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream import CallAttempts, CircuitBreaker, RetryPolicy, Upstream

HOST = "http://gpu-1:11434"
BOOM = UpstreamServerError("boom", status_code=500)
DOWN = UpstreamConnectionError("down")
MISSING = ModelNotFound("no", status_code=404)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 2, reset_after: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(HOST, threshold=threshold, reset_after=reset_after, clock=clock), clock


def call(b: CircuitBreaker, model: str, outcome: BaseException | None) -> None:
    b.settle(b.admit(model), outcome)


def test_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    b, clock = breaker()
    call(b, "m", BOOM)
    call(b, "m", BOOM)
    assert b.state("m") == "open" and b.state() == "closed"
    with pytest.raises(CircuitOpen, match=r"model 'm' on http://gpu-1:11434 failed 2 calls"):
        b.admit("m")
    clock.now = 10.0
    assert b.state("m") == "half_open"
    trial = b.admit("m")
    with pytest.raises(CircuitOpen):
        b.admit("m")  # others still fail fast meanwhile
    b.settle(trial, BOOM)  # the trial failed: open again for another 10 s
    assert b.state("m") == "open"
    clock.now = 20.0
    b.settle(b.admit("m"), None)
    assert b.state("m") == "closed" and b.failures("m") == 0
    call(b, "m", MISSING)  # caller mistakes never count
    assert b.failures("m") == 0


@pytest.mark.parametrize("into", [0.0, 6.5, 9.6])
def test_a_refusal_says_when_the_circuit_lets_a_call_through_as_retry_after_does(
    into: float,
) -> None:
    """Open, it said ``(in 0 s)`` with under half a second left, and a ``Retry-After`` of 1;
    half-open with its trial under way, a time already past, ``(in 0 s)``, to every caller
    (the gateway's Retry-After: 1)."""
    b, clock = breaker()
    call(b, "m", BOOM)
    call(b, "m", BOOM)
    clock.now = into
    with pytest.raises(CircuitOpen) as refused:
        b.admit("m")
    left = 10.0 - into
    assert refused.value.retry_after == pytest.approx(left)
    assert f"(in {math.ceil(left)} s)" in str(refused.value)
    clock.now = 10.0
    trial = b.admit("m")
    with pytest.raises(CircuitOpen) as waiting:
        b.admit("m")
    assert waiting.value.retry_after == 0.0
    assert str(waiting.value) == (
        "model 'm' on http://gpu-1:11434 failed 2 calls in a row; one call is trying it now: "
        "try again in a second; other models on this server are not affected. Check the "
        "server, or wait"
    )
    b.settle(trial, None)


def test_a_models_failures_never_refuse_another_model() -> None:
    b, _ = breaker()
    for _ in range(5):
        with contextlib.suppress(CircuitOpen):
            call(b, "broken:1b", BOOM)
    assert b.state("broken:1b") == "open"
    call(b, "healthy:8b", None)  # not refused
    assert b.state() == "closed"


def test_connection_failures_open_the_host_for_every_model() -> None:
    b, clock = breaker()
    call(b, "a", DOWN)
    call(b, "b", DOWN)
    with pytest.raises(CircuitOpen, match=r"^Ollama at http://gpu-1:11434 failed 2 calls"):
        b.admit("c")
    clock.now = 10.0
    b.settle(b.admit("c"), None)
    assert b.state() == "closed"


def test_a_health_check_that_answers_closes_the_host_but_not_its_models() -> None:
    b, _ = breaker()
    call(b, "broken", BOOM)
    call(b, "broken", BOOM)
    call(b, "a", DOWN)
    call(b, "a", DOWN)
    assert b.state() == "open" and b.state("broken") == "open"
    b.answered()  # the gateway's discovery reached it: no need to wait out the reset
    assert b.state() == "closed" and b.failures() == 0
    call(b, "a", None)
    assert b.state("broken") == "open"  # an answering server may still fail a model
    with pytest.raises(CircuitOpen, match="model 'broken'"):
        b.admit("broken")


def test_an_answer_proves_the_host_is_up() -> None:
    b, _ = breaker(threshold=3)
    call(b, "a", DOWN)
    call(b, "a", DOWN)
    call(b, "a", BOOM)  # Ollama answered 500: reachable after all
    assert b.failures() == 0 and b.failures("a") == 1
    call(b, "a", UpstreamTimeout("silent"))  # silence proves nothing about the host
    assert b.failures() == 0 and b.failures("a") == 2


def test_one_call_counts_once_however_often_it_was_retried() -> None:
    b, _ = breaker(threshold=2)
    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=0), "m")
    assert attempts.retry_in(BOOM) is not None
    assert attempts.retry_in(BOOM) is not None
    assert attempts.retry_in(BOOM) is None  # out of retries: the call ends, counted once
    assert b.failures("m") == 1 and b.state("m") == "closed"


class _Told:
    """A Waits that counts the waits it is told of, and knows whether one is going on."""

    def __init__(self) -> None:
        self.waits = 0
        self.inside = False

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self.waits += 1
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


@given(
    failures=st.lists(st.sampled_from([BOOM, DOWN, MISSING]), max_size=4),
    asynchronous=st.booleans(),
)
def test_each_wait_between_attempts_is_told_and_no_attempt_is(
    failures: list[UpstreamError], asynchronous: bool
) -> None:
    """The meter keeps the waits between a call's attempts out of Ollama's time (a hard
    budget's time cut, busy time charged): it is told of each, sync or async, and never
    while an attempt runs. A retry's backoff ran out a timed call, and was charged as GPU time."""
    b, _ = breaker(threshold=100)
    told = _Told()
    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=0.0001), "m", waits=told)
    left = list(failures)

    def attempt() -> str:
        assert not told.inside
        if left:
            raise left.pop(0)
        return "ok"

    async def aattempt() -> str:
        return attempt()

    retried = 0
    for failure in failures:
        if failure is MISSING or retried == 2:  # a 4xx is never retried; two retries at most
            break
        retried += 1
    try:
        got = asyncio.run(attempts.arun(aattempt)) if asynchronous else attempts.run(attempt)
    except UpstreamError:
        got = "failed"
    assert told.waits == retried
    assert got == ("ok" if len(failures) <= retried else "failed")


def test_a_calls_retry_is_not_refused_by_the_circuit_its_first_attempt_reopened() -> None:
    b, clock = breaker(threshold=1)
    call(b, "m", BOOM)
    clock.now = 10.0  # half-open: this call is the trial
    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=0), "m")
    assert attempts.retry_in(BOOM) is not None  # no second admission: the retry goes ahead
    attempts.end()  # ... and succeeds
    assert b.state("m") == "closed"


def test_streams_are_not_retried_once_started_and_an_abandoned_call_counts_neither_way() -> None:
    b, clock = breaker(threshold=1)
    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=0), "m")
    assert attempts.retry_in(StreamError("broke"), started=True) is None
    assert b.state("m") == "open"  # a broken stream is the model's failure
    clock.now = 10.0
    CallAttempts(b, RetryPolicy(), "m").end(KeyboardInterrupt())  # the trial's caller left
    assert b.state("m") == "half_open"
    b.admit("m")  # the next caller may try


def test_the_retry_loop_waits_what_the_upstream_asks_unless_it_asks_too_much() -> None:
    b, _ = breaker(threshold=3)
    slow = RateLimited("slow down", status_code=429, retry_after=2.0)
    outcomes: list[UpstreamError | None] = [BOOM, slow, None]
    waits: list[float] = []

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "answer"

    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=0.0), "m")
    assert attempts.run(attempt, sleep=waits.append) == "answer"
    assert waits == [0.0, 2.0]  # the backoff, then the Retry-After
    attempts.end()
    # Longer than the policy ever waits: the call fails at once, with the upstream's answer.
    later = RateLimited("come back in an hour", status_code=429, retry_after=3600.0)
    impatient = CallAttempts(b, RetryPolicy(retries=2, backoff=0.0, max_backoff=8.0), "m")
    assert impatient.retry_in(later) is None
    assert b.failures("m") == 1


OUTCOMES = st.sampled_from(
    [None, BOOM, DOWN, MISSING, UpstreamTimeout("t"), StreamError("s"), KeyboardInterrupt()]
)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), OUTCOMES), max_size=60))
def test_circuits_count_consecutive_failed_calls_per_host_and_per_model(
    calls: list[tuple[str, BaseException | None]],
) -> None:
    """Against a reference: a model opens after 3 of its own failures in a row, the host after
    3 connection failures in a row, and nothing else refuses a call (the clock stands still)."""
    b, _ = breaker(threshold=3)
    host = 0
    models = {"a": 0, "b": 0, "c": 0}
    for model, outcome in calls:
        refused = host >= 3 or models[model] >= 3
        try:
            ticket = b.admit(model)
        except CircuitOpen:
            assert refused
            continue
        assert not refused
        b.settle(ticket, outcome)
        kind = outcome.error_type if isinstance(outcome, UpstreamError) else None
        if outcome is None:
            host, models[model] = 0, 0
        elif kind == "connection":
            host += 1
        elif kind is not None:
            host = 0 if kind != "timeout" else host
            if kind in ("upstream_5xx", "timeout", "stream_error"):
                models[model] += 1


def test_cli_streams_are_retried_before_their_first_chunk(
    emulator: OllamaEmulator, sqlite_url: str
) -> None:
    from ollama_meter.config import load_settings

    emulator.inject(Fault.HTTP_503)
    meter = Meter.from_settings(load_settings(db_url=sqlite_url), source="cli")
    who = Attribution(tenant="acme", department="sales")
    run = meter.chat(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "hi"}],
        attribution=who,
        stream=True,
    )
    assert list(run)[-1].done
    assert len(emulator.requests_to("/api/chat")) == 2  # the 503, then the stream
    assert run.span.status == "ok"
    # After the first chunk, never: the caller has seen part of a reply.
    emulator.inject(Fault.DROP, after_tokens=2)
    again = meter.chat(
        model="llama3.1:8b",
        messages=[{"role": "user", "content": "hi"}],
        attribution=who,
        stream=True,
    )
    with pytest.raises(StreamError):
        list(again)
    assert len(emulator.requests_to("/api/chat")) == 3
    assert again.span.error_type == "stream_error"


def test_async_streams_are_retried_before_their_first_chunk(emulator: OllamaEmulator) -> None:
    emulator.inject(Fault.HTTP_503)
    upstream = Upstream(emulator.url, retry=RetryPolicy(retries=1, backoff=0))
    request = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}

    async def chunks() -> list[object]:
        return [part async for part in upstream.astream("chat", request)]

    parts = asyncio.run(chunks())
    assert getattr(parts[-1], "done", False) and len(emulator.requests_to("/api/chat")) == 2


class _NoTimeLeft:
    """A hard budget's time cap that has run out (as after a retry's backoff)."""

    def time_left_s(self) -> float | None:
        return 0.0

    def out_of_time(self) -> UpstreamError:
        from ollama_meter.errors import OverCap

        return OverCap("ran all the busy time it was admitted on")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_call_with_no_time_left_is_cut_not_sent_and_blames_no_server(
    emulator: OllamaEmulator, stream: bool
) -> None:
    """A read timeout of 0 is no timeout to the socket but a non-blocking read: a call whose
    time ran out while it waited to retry was sent anyway and failed as 'cannot reach
    Ollama: is it running?', was retried as such, and counted as the host down on its
    breaker (three such calls failed everyone's calls at that host for a minute)."""
    b, _ = breaker(threshold=1)
    upstream = Upstream(emulator.url, retry=RetryPolicy(retries=2, backoff=0.0), breaker=b)
    request = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}

    def send() -> object:
        if stream:
            return list(upstream.stream("chat", request, _NoTimeLeft()))
        return upstream.call("chat", request, _NoTimeLeft())

    with pytest.raises(UpstreamError, match="ran all the busy time") as cut:
        send()
    assert cut.value.error_type == "over_cap"
    assert not emulator.requests_to("/api/chat")
    assert b.state() == "closed" and b.state("llama3.1:8b") == "closed"


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_a_trial_whose_caller_leaves_while_it_waits_to_retry_ends_its_trial(flavour: str) -> None:
    """The caller leaves (a hang-up cancels it; Ctrl-C) during the wait between attempts: the
    call counts neither way, and its circuit's next caller may try. Left unsettled, the
    trial ran for ever: every later call was refused 'in 0 s', until the process restarted."""
    b, clock = breaker(threshold=1)
    call(b, "m", BOOM)
    clock.now = 10.0  # half-open: the next call is the trial

    def attempt() -> str:
        raise BOOM

    attempts = CallAttempts(b, RetryPolicy(retries=2, backoff=60.0), "m")
    if flavour == "async":

        async def leave() -> None:
            async def failing() -> str:
                attempt()
                return "never"

            task = asyncio.ensure_future(attempts.arun(failing))
            await asyncio.sleep(0)  # its first attempt failed: it waits 60 s to retry
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(leave())
    else:

        def interrupted(seconds: float) -> None:
            raise KeyboardInterrupt  # Ctrl-C during the wait

        with pytest.raises(KeyboardInterrupt):
            attempts.run(attempt, sleep=interrupted)
    assert b.state("m") == "half_open" and b.failures("m") == 1
    b.settle(b.admit("m"), None)  # the next caller is let through, and closes it
    assert b.state("m") == "closed"


@given(
    st.lists(st.tuples(st.sampled_from(["", "acme/sales", "acme/support"]), OUTCOMES), max_size=60)
)
def test_one_callers_run_of_failures_refuses_that_caller_alone(
    calls: list[tuple[str, BaseException | None]],
) -> None:
    """Against a reference: a call that names its caller is refused when its own last 3 calls
    to the model failed, or when the model's last 3 failed and more than one caller (or a
    call naming none) failed among them; one caller's run never refuses another's calls.
    Calls that name no caller count as before: 3 failures in a row open the model."""
    b, _ = breaker(threshold=3)
    host = 0
    model_run: list[str] = []  # whose were the model's failures since its last success
    own = {"acme/sales": 0, "acme/support": 0}
    opened = False
    for caller, outcome in calls:
        refused = host >= 3 or opened or own.get(caller, 0) >= 3
        said = []
        try:
            ticket = b.admit("m", caller)
        except CircuitOpen as exc:
            said.append(str(exc))
        if said:
            assert refused
            if caller and own[caller] >= 3 and not opened and host < 3:
                assert f"called by {caller}, failed" in said[0]
            continue
        assert not refused, (caller, model_run, own)
        b.settle(ticket, outcome)
        kind = outcome.error_type if isinstance(outcome, UpstreamError) else None
        if outcome is None:
            host, model_run = 0, []
            if caller:
                own[caller] = 0
        elif kind == "connection":
            host += 1
        elif kind is not None:
            host = 0 if kind != "timeout" else host
            if kind in ("upstream_5xx", "timeout", "stream_error"):
                model_run.append(caller)
                if caller:
                    own[caller] += 1
                many = len(set(model_run)) > 1 or "" in model_run
                opened = opened or (len(model_run) >= 3 and many)


def test_the_circuits_callers_open_stay_bounded_in_number() -> None:
    """Where keys are not required a caller names its own department: one that failed three
    calls under each of many names kept a circuit open for each, without end."""
    b, _ = breaker(threshold=1)
    for n in range(5000):
        b.settle(b.admit("m", f"acme/d{n}"), BOOM)
        b.settle(b.admit("m", "acme/ok"), None)  # the model's run ends; the caller's stays
    assert len(b._callers) <= 4096
    assert b.state("m", "acme/d4999") == "open"  # the newest are kept


LONG = "m" * 1025
"""A model name longer than a process keeps whole (``model_cache_key``): its circuits are
kept by its digest, and routing asked for them by its name, finding none open."""


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m", "n", LONG]),
            st.sampled_from(["", "a", "b"]),
            OUTCOMES,
            st.sampled_from([0.0, 4.0, 11.0]),
        ),
        max_size=12,
    ),
    st.sampled_from(["m", "n", LONG]),
    st.sampled_from(["", "a", "b"]),
)
def test_any_open_is_whether_one_of_the_three_circuits_is_open(
    steps: list[tuple[str, str, BaseException | None, float]], model: str, caller: str
) -> None:
    """Routing asks once, under one lock, what it asked as three ``state`` calls, whatever
    the model's name."""
    b, clock = breaker()
    for named, by, outcome, later in steps:
        with contextlib.suppress(CircuitOpen):
            b.settle(b.admit(named, by), outcome)
        clock.now += later
        three = (b.state(), b.state(model), b.state(model, caller))
        assert b.any_open(model, caller) == ("open" in three)
