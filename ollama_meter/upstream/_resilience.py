"""Retries and circuit breakers for calls to Ollama (DESIGN §10): one policy for every transport.

A call is one unit. It passes the breaker once, before its first attempt; its own retries are
never refused by a circuit that its first attempt opened; and its outcome counts once, however
many attempts it took. Only transient failures are retried (connection, timeout, 5xx, 429),
with exponential backoff and jitter, and only while nothing has been streamed to the caller: a
4xx is the caller's mistake and is never repeated. An upstream that says when to come back
(``Retry-After`` on a 429 or 503) is waited for, unless that is longer than ``max_backoff``:
then the call fails at once with that answer, and its caller learns when to retry. An answer a
metering gateway recorded as a call (``UpstreamError.recorded``: its 429, Ollama's 503 it
relayed) is never retried either: each attempt was a span in its ledger, one call counted three
times, and the gateway had retried its own upstream already.

Each upstream host has two kinds of circuit. The host's own counts connection
failures (nothing answers there at all). One circuit per (host, model) counts
that model's own failures: a 5xx or 429 answer, a timeout, a stream that broke.
So one tenant's broken model never fails everyone else's calls. A circuit
opens after ``threshold`` consecutive failed calls, fails fast with
:class:`CircuitOpen` until ``reset_after`` seconds pass, then lets one trial
call through, whose outcome closes or re-opens it.

A call may name its caller (the gateway names the tenant and department). Then a model's
circuit opens only on failures from two callers or more: a run of one caller's failures is
likely its requests' own doing (a mistake Ollama answers as a server error, in words no
classifier knows yet), so it opens that caller's circuit for the model, and the other
callers' calls still reach it; once it opened, that caller's failures count on its circuit
alone, and its calls are never the model's trial. Calls that name no caller count as before.

The two transports (the ``ollama`` client in ``_sdk.py``, the gateway's pooled aiohttp client
in ``_pooled.py``) are :class:`Resilient`: each drives every call through :class:`CallAttempts`,
whose :meth:`~CallAttempts.run` is the one retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from ollama_meter._forks import renew_after_fork
from ollama_meter._jitter import jittered
from ollama_meter._names import model_cache_key
from ollama_meter._runtime import runtime
from ollama_meter.errors import CircuitOpen, NoConnectionFree, UpstreamError

TRANSIENT = frozenset({"connection", "timeout", "upstream_5xx", "rate_limited"})
"""Failures worth another attempt, when nothing was streamed yet."""
_HOST_FAILURES = frozenset({"connection"})
_MODEL_FAILURES = frozenset({"timeout", "upstream_5xx", "rate_limited", "stream_error"})
_HOST_SILENT = frozenset({"connection", "timeout"})
"""Failures that do not prove the host answered; any other outcome does."""
_MAX_MODEL_CIRCUITS = 4096

T = TypeVar("T")
K = TypeVar("K")


def caller_of(tenant: str, department: str) -> str:
    """Whose call it is, for the circuits (see :class:`CircuitBreaker`): ``tenant/department``."""
    return f"{tenant}/{department}"


class Waits(Protocol):
    """Told of each wait between a call's attempts (the meter: waiting is not Ollama's time,
    so it neither runs out a hard budget's time for the call nor is charged as busy time)."""

    def waiting(self) -> contextlib.AbstractContextManager[None]: ...


_NOT_TOLD: contextlib.nullcontext[None] = contextlib.nullcontext()


def is_transient(error: UpstreamError) -> bool:
    return error.error_type in TRANSIENT and not isinstance(error, NoConnectionFree)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1-based): doubling, capped, with up to 50 % jitter."""
        base = min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)
        return float(jittered(base))

    def wait(self, attempt: int, asked: float | None = None) -> float | None:
        """Seconds before retry ``attempt``, at least what the upstream ``asked`` (``Retry-After``).

        None when the upstream asked for longer than ``max_backoff``: not worth holding a
        call for; it fails now, with the upstream's answer.
        """
        delay = self.delay(attempt)
        if asked is None:
            return delay
        if asked > self.max_backoff:
            return None
        return max(delay, asked)


@dataclass(slots=True, eq=False)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: Ticket | None = None
    """The call let through as the half-open circuit's trial, until it ends: only its own
    outcome ends it (a call sent before the circuit opened that ends meanwhile does not)."""
    callers: set[str] = field(default_factory=set)
    """Whose calls failed in the run (a model's circuit): ``""`` for calls that name none. Two
    at most: whether the run is one caller's is all it tells."""


@dataclass(slots=True, eq=False)
class Ticket:
    """One call's admission (the circuits it is the trial of hold it: :attr:`_Circuit.trial`)."""

    model: str | bytes
    """The model's circuit (:func:`~ollama_meter._names.model_cache_key`)."""
    caller: str = ""
    settled: bool = field(default=False, repr=False)


class CircuitBreaker:
    """The circuits of one upstream host: the host's own and one per model."""

    def __init__(
        self,
        host: str,
        *,
        threshold: int = 3,
        reset_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        # A plain lock, renewed in a forked child (a ChildLock's ``with`` is two calls of
        # Python more, and this one is taken four times a call).
        self._lock = threading.Lock()
        self._host = _Circuit()
        # By model_cache_key: a name of megabytes is not kept whole for each circuit.
        self._models: dict[str | bytes, _Circuit] = {}
        self._callers: dict[tuple[str | bytes, str], _Circuit] = {}  # (model, caller)
        renew_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def state(self, model: str | None = None, caller: str = "") -> str:
        """``closed``, ``open`` or ``half_open``: the host's circuit, ``model``'s, or the one
        ``caller`` has for ``model``."""
        key = None if model is None else model_cache_key(model)
        with self._lock:
            if key is not None and caller:
                return self._state(self._callers.get((key, caller), _Circuit()))
            circuit = self._host if key is None else self._models.get(key, _Circuit())
            return self._state(circuit)

    def any_open(self, model: str, caller: str = "") -> bool:
        """Whether the host's circuit, ``model``'s or ``caller``'s for ``model`` is open: the
        three :meth:`state` reads of routing (two a call), under one lock, none made up."""
        key = model_cache_key(model)  # as the circuits are kept (a long name: its digest)
        with self._lock:
            own = self._callers.get((key, caller)) if caller else self._models.get(key)
            for circuit in (self._host, self._models.get(key), own):
                if circuit is not None and self._state(circuit) == "open":
                    return True
            return False

    def failures(self, model: str | None = None) -> int:
        """Consecutive failed calls counted against the host, or against ``model``."""
        key = None if model is None else model_cache_key(model)
        with self._lock:
            circuit = self._host if key is None else self._models.get(key, _Circuit())
            return circuit.failures

    def _state(self, circuit: _Circuit) -> str:
        if circuit.opened_at is None:
            return "closed"
        if self._clock() - circuit.opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def admit(self, model: str, caller: str = "") -> Ticket:
        """Let ``caller``'s call to ``model`` through, or raise :class:`CircuitOpen` saying until when."""
        key = model_cache_key(model)
        with self._lock:
            ticket = Ticket(key, caller)
            circuit = self._models.get(key)
            own = self._callers.get((key, caller)) if caller else None
            refused = self._refusal(self._host, f"Ollama at {self.host}")
            if refused is None and circuit is not None:
                refused = self._refusal(
                    circuit,
                    f"model {model!r} on {self.host}",
                    hint="; other models on this server are not affected",
                )
            if refused is None and own is not None:
                refused = self._refusal(
                    own,
                    f"model {model!r} on {self.host}, called by {caller},",
                    hint="; other callers of the model are not affected",
                )
            if refused is not None:
                raise refused
            # A caller let through on its own circuit's trial speaks for itself, not for the
            # model: the model's trial is left to another caller's call.
            suspect = own is not None and own.opened_at is not None
            for passed in (self._host, None if suspect else circuit, own):
                if passed is not None and self._state(passed) == "half_open":
                    passed.trial = ticket
            return ticket

    def _refusal(self, circuit: _Circuit, what: str, hint: str = "") -> CircuitOpen | None:
        state = self._state(circuit)
        if state == "closed" or (state == "half_open" and circuit.trial is None):
            return None
        assert circuit.opened_at is not None
        wait = max(self.reset_after - (self._clock() - circuit.opened_at), 0.0)
        if state == "half_open":  # its trial is under way: the time it gave has passed
            when = "one call is trying it now: try again in a second"
        else:  # whole seconds up, as the gateway's Retry-After says it
            retry_at = datetime.now(UTC) + timedelta(seconds=wait)
            when = f"not calling it until {retry_at:%H:%M:%S} UTC (in {math.ceil(wait)} s)"
        return CircuitOpen(
            f"{what} failed {circuit.failures} calls in a row; {when}{hint}. Check the server, "
            "or wait",
            retry_after=wait,
        )

    def settle(self, ticket: Ticket, outcome: BaseException | None) -> None:
        """Count a call's outcome once: None is success; an UpstreamError is classified.

        Anything else (the caller left, a bug, a request never sent) counts neither way;
        it only ends the call's trial, if it was one.
        """
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            sent = isinstance(outcome, UpstreamError) and outcome.reached_upstream
            kind = outcome.error_type if sent and isinstance(outcome, UpstreamError) else None
            circuit = self._models.get(ticket.model)
            mine = (ticket.model, ticket.caller)
            own = self._callers.get(mine) if ticket.caller else None
            if outcome is None:
                self._host = _Circuit()
                self._models.pop(ticket.model, None)
                self._callers.pop(mine, None)
                return
            if kind is not None and kind not in _HOST_SILENT:
                self._host = _Circuit()  # the host answered
            if kind in _HOST_FAILURES:
                self._fail(self._host, ticket)
            # A failure of a caller whose own circuit opened counts on its own circuit alone:
            # else its failed trials, each minute, kept the model's circuit open for everyone.
            suspect = own is not None and own.opened_at is not None
            if kind in _MODEL_FAILURES and not suspect:
                if circuit is None:
                    self._forget_closed()  # before it is made: not the new one itself
                    circuit = self._models[ticket.model] = _Circuit()
                if len(circuit.callers) < 2:  # all ``many`` reads: a trial a minute added one
                    circuit.callers.add(ticket.caller)
                # One named caller's run of failures opens its own circuit, not everyone's.
                many = len(circuit.callers) > 1 or "" in circuit.callers
                self._fail(circuit, ticket, opens=many)
            if kind in _MODEL_FAILURES and ticket.caller:
                if own is None:
                    self._forget_closed()
                    own = self._callers[mine] = _Circuit()
                self._fail(own, ticket)
            # Counted or not (the caller hung up, a request never sent), its trials are over.
            for passed in (self._host, circuit, own):
                if passed is not None and passed.trial is ticket:
                    passed.trial = None

    def answered(self) -> None:
        """The host answered a health check (the gateway's discovery): close the host's circuit.

        Connection failures are what open it, so an answer proves them over. The models'
        circuits stay as they are: a server that answers may still fail a model.
        """
        with self._lock:
            self._host = _Circuit()

    def _fail(self, circuit: _Circuit, ticket: Ticket, *, opens: bool = True) -> None:
        """One failed call more on ``circuit``: its failed trial re-opens it. A call that was
        the trial of a circuit closed since (by a success) is one failure on the new one."""
        circuit.failures += 1
        was_trial = circuit.trial is ticket
        if was_trial:
            circuit.trial = None
        if was_trial or (opens and circuit.failures >= self.threshold):
            circuit.opened_at = self._clock()

    def _forget_closed(self) -> None:
        # Model names come from callers: keep the table bounded by dropping closed circuits.
        _forget_closed(self._models)
        _forget_closed(self._callers)


def _forget_closed(circuits: dict[K, _Circuit]) -> None:
    """Room for one circuit more, within :data:`_MAX_MODEL_CIRCUITS`."""
    if len(circuits) >= _MAX_MODEL_CIRCUITS:
        for name in [n for n, c in circuits.items() if c.opened_at is None]:
            del circuits[name]
    # Still too many (callers name themselves where keys are not required): the oldest open
    # ones go, whose callers' next calls are let through as if their wait were over.
    for name in list(circuits)[: max(len(circuits) - _MAX_MODEL_CIRCUITS + 1, 0)]:
        del circuits[name]


class CallAttempts:
    """One call's way through the breaker and its retries, for any transport.

    Admitted once (:class:`CircuitOpen` if not); ask :meth:`retry_in` after each
    failed attempt; :meth:`end` counts the outcome, once.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        retry: RetryPolicy,
        model: str,
        *,
        circuit: str | None = None,
        waits: Waits | None = None,
        caller: str = "",
    ) -> None:
        """``circuit``: the name the model's circuit goes by (default ``model``, as asked),
        so that every spelling of one model shares one circuit. ``waits``: who is told of
        the waits between attempts. ``caller``: whose call it is (see :class:`CircuitBreaker`)."""
        self._breaker = breaker
        self._retry = retry
        self._waits = waits
        self._ticket = breaker.admit(circuit or model, caller)
        self.model = model
        self.attempts = 0

    def retry_in(self, error: UpstreamError, *, started: bool = False) -> float | None:
        """Seconds to wait before the next attempt; None when the call ends with ``error``.

        A call is retried only on a transient failure, only while nothing has been
        streamed (``started``), never once a metering gateway recorded it (each attempt
        would be a call in its ledger) or the upstream had it whole and went silent past
        the timeout (``taken``: a gateway records it too), and at most ``retries`` times.
        """
        self.attempts += 1
        again = not (started or error.recorded or error.taken) and is_transient(error)
        if again and self.attempts <= self._retry.retries:
            wait = self._retry.wait(self.attempts, error.retry_after)
            if wait is not None:
                return wait
        self.end(error)
        return None

    def run(self, attempt: Callable[[], T], *, sleep: Callable[[float], object] = time.sleep) -> T:
        r"""``attempt()`` again after each transient failure, until it succeeds or fails for good.

        ``attempt`` raises classified :class:`UpstreamError`\ s only. Its success leaves the
        call open (a stream goes on): :meth:`end` it. A failure for good is counted and raised.
        """
        while True:
            try:
                return attempt()
            except UpstreamError as error:
                wait = self.retry_in(error)
                if wait is None:
                    raise
            except BaseException as exc:  # Ctrl-C, SIGTERM, the caller went away
                self.end(exc)
                raise
            try:
                with self._waiting():
                    sleep(wait)
            except BaseException as exc:  # ... while it waited: its trial, if it was one, ends
                self.end(exc)
                raise

    async def arun(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """:meth:`run` for a coroutine, waiting without blocking the event loop."""
        while True:
            try:
                return await attempt()
            except UpstreamError as error:
                wait = self.retry_in(error)
                if wait is None:
                    raise
            except BaseException as exc:
                self.end(exc)
                raise
            try:
                with self._waiting():
                    await asyncio.sleep(wait)
            except BaseException as exc:  # cancelled while it waited (the caller hung up)
                self.end(exc)
                raise

    def _waiting(self) -> contextlib.AbstractContextManager[None]:
        return _NOT_TOLD if self._waits is None else self._waits.waiting()

    def end(self, outcome: BaseException | None = None) -> None:
        """The call is over: count it (success with None) on its circuits."""
        self._breaker.settle(self._ticket, outcome)


class Resilient:
    """A transport to one host, behind the one policy: its breaker and its retries."""

    def __init__(self, host: str, *, retry: RetryPolicy, breaker: CircuitBreaker) -> None:
        self.host = host
        self.retry = retry
        self.breaker = breaker

    def attempts(self, model: str, *, waits: Waits | None = None, caller: str = "") -> CallAttempts:
        """One call's passage through this host's breaker and retry policy (``waits``: who
        is told of its waits between attempts; ``caller``: whose call it is)."""
        return CallAttempts(self.breaker, self.retry, model, waits=waits, caller=caller)


def breaker_for(
    host: str,
    *,
    threshold: int,
    reset_after: float,
    clock: Callable[[], float] = time.monotonic,
) -> CircuitBreaker:
    """The process-wide breaker for ``host``: every client of one upstream shares its state.

    ``clock`` is the one it keeps time by when this call is the one that makes it (a test
    that asks first gives every client of the host a breaker on its own clock).
    """
    return runtime().shared(
        "breaker",
        (host, threshold, reset_after),
        lambda: CircuitBreaker(host, threshold=threshold, reset_after=reset_after, clock=clock),
    )


def reset_breakers() -> None:
    """Forget every breaker's state (tests; a host's operator after fixing the upstream)."""
    runtime().drop("breaker")
