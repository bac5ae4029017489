"""Retries and a circuit breaker for calls to Ollama (DESIGN §10).

Only transient failures are retried (connection, timeout, 5xx, 429), with
exponential backoff and jitter, and only for calls that have not started
streaming: a 4xx is the caller's mistake and is never repeated. The breaker
counts consecutive transient failures per upstream host; once open, calls fail
fast with :class:`CircuitOpen` until ``reset_after`` seconds pass, then one
trial call decides whether it closes again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ollama_meter.errors import CircuitOpen, UpstreamError

TRANSIENT = frozenset({"connection", "timeout", "upstream_5xx", "rate_limited"})


def is_transient(error: UpstreamError) -> bool:
    return error.error_type in TRANSIENT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1-based): doubling, capped, with up to 50 % jitter."""
        base = min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)
        return float(base * (1 + random.random() / 2))


class CircuitBreaker:
    """Per-host breaker: closed → open after ``threshold`` failures → half-open after ``reset_after``."""

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
        self._lock = threading.Lock()
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def before(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go through now."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return
            if state == "half_open" and not self._trial_running:
                self._trial_running = True  # one trial; the rest keep failing fast
                return
            assert self.opened_at is not None
            wait = max(self.reset_after - (self._clock() - self.opened_at), 0.0)
        retry_at = datetime.now(UTC) + timedelta(seconds=wait)
        raise CircuitOpen(
            f"Ollama at {self.host} failed {self.failures} times in a row; not calling it until "
            f"{retry_at:%H:%M:%S} UTC (in {wait:.0f} s). Check the server, or wait",
            retry_after=wait,
        )

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self._trial_running = False

    def failure(self, error: UpstreamError) -> None:
        if not is_transient(error):
            with self._lock:
                self._trial_running = False
            return
        with self._lock:
            self.failures += 1
            if self._trial_running or self.failures >= self.threshold:
                self.opened_at = self._clock()
            self._trial_running = False


_breakers: dict[tuple[str, int, float], CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(host: str, *, threshold: int, reset_after: float) -> CircuitBreaker:
    """The process-wide breaker for ``host``: every client of one upstream shares its state."""
    key = (host, threshold, reset_after)
    with _breakers_lock:
        if key not in _breakers:
            _breakers[key] = CircuitBreaker(host, threshold=threshold, reset_after=reset_after)
        return _breakers[key]


def reset_breakers() -> None:
    """Forget every breaker's state (tests; a host's operator after fixing the upstream)."""
    with _breakers_lock:
        _breakers.clear()
