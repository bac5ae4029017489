"""Per-department limits in the gateway: calls and tokens per minute, concurrency, weight.

The limits are the ledger's (``ometer limit set``), refreshed in the background;
the counting is this process's own, so with several gateways each one allows a
department its full rate (say so when you size limits). A limit applies to a
whole tenant, to one of its departments, or to one API key; a call is held to
every limit that covers it.

- **rpm / tpm** are sliding windows over the last 60 seconds: the calls this
  gateway admitted (not those a hard budget or a full queue then turned away),
  and the tokens (in + out) of the calls it finished. A call
  over either is refused before it is metered, with ``Retry-After`` the exact
  number of seconds (rounded up) until enough of the window has passed for it to
  be admitted. A call's tokens count when it ends, so calls already running can
  take a department past its tpm; the next ones then wait.
- **concurrency** caps the calls of the scope holding a slot at once; further
  calls wait in the fair queue until one of the scope's calls ends. Every call
  is counted in each of its scopes, limited or not, so a limit set or lowered
  while calls run holds back new ones until fewer than the limit run. A count is
  kept only while the scope has calls holding a slot (those are bounded by the
  slots), so departments named freely by callers leave nothing behind.
- **weight** is the department's share of slots when calls queue (default 1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from ollama_meter.errors import LedgerError
from ollama_meter.gateway._queue import Capacity, FairQueue
from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import Ledger
from ollama_meter.records import Limit, SpanRecord

log = logging.getLogger("ollama_meter.gateway")

WINDOW_NS = 60 * 10**9
LIMITS_SECONDS = 10.0
"""How often a gateway reads the limits from the ledger."""

Scope = tuple[str, ...]


class OverLimit(Exception):
    """A call over its rpm or tpm: refused, with the seconds until it would be admitted."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class Admission:
    """What the fair queue needs to know of an admitted call, and how to take its count back."""

    flow: tuple[str, str]
    weight: int = 1
    caps: tuple[Capacity, ...] = ()
    undo: Callable[[], None] = field(default=_nothing, repr=False, compare=False)

    def refund(self) -> None:
        """The gateway turned the call away after all (a budget, a full queue): it is no call
        of the minute, so the department's rpm does not run out on refusals it retries."""
        self.undo()


class _Places(Capacity):
    """A scope's calls holding a slot: counted in a table shared by all its calls, held to the
    scope's concurrency limit in force now (read at each grant, so a new limit applies to
    calls already waiting). The table keeps a scope only while its count is above 0."""

    __slots__ = ("_limits", "_running", "_scope")

    def __init__(
        self,
        running: dict[Scope, int],
        limits: Callable[[], dict[Scope, Limit]],
        scope: Scope,
        name: str,
    ) -> None:
        self._running = running
        self._limits = limits
        self._scope = scope
        self.name = name

    @property
    def in_use(self) -> int:
        return self._running.get(self._scope, 0)

    @in_use.setter
    def in_use(self, count: int) -> None:
        if count > 0:
            self._running[self._scope] = count
        else:
            self._running.pop(self._scope, None)

    @property
    def limit(self) -> int | None:  # type: ignore[override]  # the ledger's: `ometer limit set`
        limit = self._limits().get(self._scope)
        return None if limit is None else limit.concurrency

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Places)
            and other._running is self._running
            and other._scope == self._scope
        )

    def __hash__(self) -> int:
        return hash(self._scope)


class _Window:
    """Amounts (calls, tokens) in the last minute: a log of (time, amount) and their sum."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[int, int]] = deque()
        self.total = 0

    def trim(self, now: int) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_NS:
            self.total -= self.events.popleft()[1]

    def add(self, now: int, amount: int) -> None:
        if amount > 0:
            self.events.append((now, amount))
            self.total += amount

    def take_back(self, moment: int, amount: int) -> None:
        """Remove one event ``add`` made (the newest such: a refund comes soon after)."""
        for index in range(len(self.events) - 1, -1, -1):
            if self.events[index] == (moment, amount):
                del self.events[index]
                self.total -= amount
                return

    def wait_ns(self, now: int, limit: int) -> int:
        """Nanoseconds until the sum falls below ``limit`` (0 when it is below now)."""
        remaining = self.total
        for moment, amount in self.events:
            if remaining < limit:
                break
            remaining -= amount
            if remaining < limit:
                return moment + WINDOW_NS - now
        return 0


def _scopes(tenant: str, department: str, key_id: int | None) -> list[Scope]:
    scopes: list[Scope] = [("tenant", tenant), ("department", tenant, department)]
    if key_id is not None:
        scopes.append(("key", str(key_id)))
    return scopes


def _named(scope: Scope, tenant: str, department: str) -> str:
    key_id = int(scope[1]) if scope[0] == "key" else None
    return Limit(tenant, None if scope[0] == "tenant" else department, key_id).scope()


def _scope_of(limit: Limit) -> Scope:
    if limit.key_id is not None:
        return ("key", str(limit.key_id))
    if limit.department is None:
        return ("tenant", limit.tenant)
    return ("department", limit.tenant, limit.department)


class RateLimits:
    """Admits calls against the limits in force; a span observer counts their tokens."""

    def __init__(self, *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._limits: dict[Scope, Limit] = {}
        self._calls: dict[Scope, _Window] = {}
        self._tokens: dict[Scope, _Window] = {}
        self._running: dict[Scope, int] = {}
        """Calls holding a slot, per scope with any (the fair queue counts them)."""
        self._keys: dict[str, int] = {}

    def load(self, limits: Iterable[Limit]) -> None:
        """Put ``limits`` in force; windows and calls in flight carry over."""
        fresh = {_scope_of(limit): limit for limit in limits}
        with self._lock:
            self._limits = fresh
            for scope in list(self._calls):
                if fresh.get(scope) is None or fresh[scope].rpm is None:
                    del self._calls[scope]
            for scope in list(self._tokens):
                if fresh.get(scope) is None or fresh[scope].tpm is None:
                    del self._tokens[scope]

    def admit(self, tenant: str, department: str, key_id: int | None = None) -> Admission:
        """Count one call against its limits; :class:`OverLimit` (counting nothing) if over one."""
        now = self.clock()
        with self._lock:
            found = [
                (scope, limit)
                for scope in _scopes(tenant, department, key_id)
                if (limit := self._limits.get(scope)) is not None
            ]
            worst: tuple[int, str] | None = None
            for scope, limit in found:
                for windows, most, what in (
                    (self._calls, limit.rpm, "calls"),
                    (self._tokens, limit.tpm, "tokens"),
                ):
                    if most is None:
                        continue
                    window = windows.setdefault(scope, _Window())
                    window.trim(now)
                    wait = window.wait_ns(now, most)
                    if wait > 0 and (worst is None or wait > worst[0]):
                        worst = (
                            wait,
                            f"{limit.scope()} is over its limit of {most:,} {what} a minute",
                        )
            if worst is not None:
                seconds = math.ceil(worst[0] / 1e9)
                raise OverLimit(
                    f"{worst[1]}; try again in {seconds} s (see `ometer limit list`)",
                    retry_after=seconds,
                )
            weight: int | None = None
            counted: list[_Window] = []
            for scope, limit in found:
                if limit.rpm is not None:
                    self._calls[scope].add(now, 1)
                    counted.append(self._calls[scope])
                if limit.weight is not None and scope[0] != "key":
                    weight = limit.weight  # the department's, over the tenant's (it comes after)

        def undo() -> None:
            with self._lock:
                while counted:  # once: emptied as it is taken back
                    counted.pop().take_back(now, 1)

        # Every scope, limited or not: a limit set later counts the calls running now.
        caps = tuple(
            _Places(self._running, self._in_force, scope, _named(scope, tenant, department))
            for scope in _scopes(tenant, department, key_id)
        )
        return Admission((tenant, department), weight or 1, caps, undo if counted else _nothing)

    def _in_force(self) -> dict[Scope, Limit]:
        return self._limits

    def running(self) -> dict[Scope, int]:
        """Calls holding a slot now, per scope that has any."""
        return dict(self._running)

    def weight_of(self, flow: Hashable) -> int:
        """A queue flow's (a department's) weight now: its own, else its tenant's, else 1."""
        if not (isinstance(flow, tuple) and len(flow) == 2):
            return 1
        tenant, department = flow
        with self._lock:
            for scope in (("department", tenant, department), ("tenant", tenant)):
                limit = self._limits.get(scope)
                if limit is not None and limit.weight is not None:
                    return limit.weight
        return 1

    def bind(self, span_id: str, key_id: int | None) -> None:
        """The call ``span_id`` was made with key ``key_id``: its tokens count there too."""
        if key_id is not None and ("key", str(key_id)) in self._limits:
            with self._lock:
                if len(self._keys) > 100_000:  # spans always end; this only bounds a bug
                    self._keys.clear()
                self._keys[span_id] = key_id

    # -- a span observer: tokens count when a call ends --------------------------------------

    def on_start(self, span: SpanRecord) -> None:
        pass

    def on_end(self, span: SpanRecord) -> None:
        tokens = span.input_tokens + span.output_tokens
        with self._lock:
            key_id = self._keys.pop(span.id, None)
            if tokens <= 0 or (not self._tokens and not self._limits):
                return
            now = self.clock()
            for scope in _scopes(span.tenant, span.department, key_id):
                limit = self._limits.get(scope)
                if limit is not None and limit.tpm is not None:
                    window = self._tokens.setdefault(scope, _Window())
                    window.trim(now)
                    window.add(now, tokens)


async def read_limits(ledger: Ledger, rates: RateLimits) -> bool:
    """Put the ledger's limits in force; False (the last ones kept) when they cannot be read."""
    try:
        rates.load(await in_thread(ledger.limits))
    except LedgerError as exc:
        log.warning("keeping the limits read before: %s", exc)
        return False
    return True


async def keep_limits(ledger: Ledger, rates: RateLimits, queue: FairQueue | None = None) -> None:
    """Put the ledger's limits in force now and every few seconds (a failed read keeps the last).

    After each read the waiting calls of ``queue`` get them too: the departments' new
    weights, and a concurrency limit raised or removed lets calls waiting for it go now,
    not when one of the scope's running calls ends.
    """
    while True:
        if await read_limits(ledger, rates) and queue is not None:
            queue.reweigh(rates.weight_of)
            queue.kick()
        await asyncio.sleep(LIMITS_SECONDS)
