"""Per-department limits in the gateway: calls and tokens per minute, concurrency, weight.

The limits are the ledger's (``ometer limit set``), refreshed in the background;
the counting is this process's own, so with several gateways each one allows a
department its full rate (say so when you size limits). A limit applies to a
whole tenant, to one of its departments, or to one API key; a call is held to
every limit that covers it.

- **rpm / tpm** are sliding windows over the last 60 seconds: the calls this
  gateway admitted (not those a hard budget or a full queue then turned away),
  and their tokens (in + out). A call over either is refused before it is
  metered, with ``Retry-After`` the exact number of seconds (rounded up) until
  enough of the window has passed for it to be admitted. Under a tpm a call's
  whole prompt (:func:`prompt_tokens`) is counted when it is admitted, so
  calls running at once cannot all slip under the limit, nor one huge prompt;
  when it ends its own tokens take the estimate's place (its reply can take a
  department past its tpm; the next calls then wait). A prompt larger than the
  tpm alone is refused outright, as final (413, no ``Retry-After``): no wait would let it in.
- **concurrency** caps the calls of the scope holding a slot at once; further
  calls wait in the fair queue until one of the scope's calls ends. Every call
  is counted in each of its scopes, limited or not, so a limit set or lowered
  while calls run holds back new ones until fewer than the limit run. A count is
  kept only while the scope has calls holding a slot (those are bounded by the
  slots), so departments named freely by callers leave nothing behind.
- **weight** is the department's share of slots when calls queue (default 1).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from ollama_meter.budgets import IMAGE_TOKENS_SEEN
from ollama_meter.gateway._queue import Capacity
from ollama_meter.gateway._requests import MeteredRequest
from ollama_meter.gateway._threads import in_thread
from ollama_meter.meter import Attribution
from ollama_meter.records import Limit, SpanRecord

log = logging.getLogger("ollama_meter.gateway")

WINDOW_NS = 60 * 10**9
LIMITS_SECONDS = 10.0
"""How often a gateway reads the limits from the ledger."""

Scope = tuple[str, ...]


class OverLimit(Exception):
    """A call over its rpm or tpm: refused, with the seconds until it would be admitted
    (at least 1); None when no wait would let it in (a prompt larger than a whole minute)."""

    def __init__(self, message: str, *, retry_after: int | None) -> None:
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
    prompt: list[_Held] = field(default_factory=list, repr=False, compare=False)
    """The prompt's tokens counted under tpm limits: given back once, when the call ends
    (its own tokens count then) or is turned away (:meth:`refund`)."""

    def refund(self) -> None:
        """The gateway turned the call away after all (a budget, a full queue): it is no call
        of the minute, so the department's rpm does not run out on refusals it retries."""
        self.undo()


class _Places(Capacity):
    """A scope's calls holding a slot: counted in a table shared by all its calls, held to the
    scope's concurrency limit in force now (read at each grant, so a new limit applies to
    calls already waiting). The table keeps a scope only while its count is above 0."""

    __slots__ = ("_department", "_limits", "_running", "_scope", "_tenant")

    def __init__(
        self,
        running: dict[Scope, int],
        limits: Callable[[], dict[Scope, Limit]],
        scope: Scope,
        tenant: str,
        department: str,
    ) -> None:
        self._running = running
        self._limits = limits
        self._scope = scope
        self._tenant, self._department = tenant, department

    @property
    def name(self) -> str:  # type: ignore[override]  # named when shown, not at every call
        return _named(self._scope, self._tenant, self._department)

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


_Held = tuple["_Window", list[int]]
"""A count :meth:`_Window.add` made: its window and its [moment, amount]."""


def _give_back(held: list[_Held]) -> None:
    """Take ``held``'s counts back, emptying it: a list given back twice gives back once."""
    while held:
        window, event = held.pop()
        window.total -= event[1]
        event[1] = 0  # what is left of it in the window counts nothing


class _Window:
    """Amounts (calls, tokens) in the last minute: a log of [time, amount] and their sum.

    An event is given back (a refund, a prompt's estimate at the call's end) by zeroing it
    in place: no search, however many calls came after it.
    """

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[list[int]] = deque()
        self.total = 0

    def trim(self, now: int) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_NS:
            event = self.events.popleft()
            self.total -= event[1]
            event[1] = 0  # out of the window: giving it back later takes nothing more

    def add(self, now: int, amount: int) -> list[int]:
        event = [now, amount]
        if amount > 0:
            self.events.append(event)
            self.total += amount
        return event

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


def prompt_tokens(request: MeteredRequest) -> tuple[int, int]:
    """About how many tokens ``request``'s prompt is, and how many pictures it carries: what
    a tpm limit counts at admission.

    All of it: its texts and what the template writes as JSON (tool definitions, earlier
    tool calls) at about four bytes of UTF-8 a token, and the tokens it sends as numbers (a
    generate's ``context``, OpenAI's token ids). Its texts alone let a call of "hi" with a
    huge tool list, or a long conversation continued by its context, count as nothing.
    Pictures apart: a model may count one as a few tokens or as thousands.
    """
    return request.facts.text_estimate(), request.facts.images


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
        self._prompts: dict[str, list[_Held]] = {}

    def load(self, limits: Iterable[Limit], keep: Iterable[Limit] = ()) -> None:
        """Put ``limits`` in force, and for the scopes of ``keep`` (rows that could not be read)
        the limits in force before; windows and calls in flight carry over."""
        fresh = {_scope_of(limit): limit for limit in limits}
        with self._lock:
            for scope in map(_scope_of, keep):
                if (before := self._limits.get(scope)) is not None:
                    fresh.setdefault(scope, before)
            self._limits = fresh
            for scope in list(self._calls):
                if fresh.get(scope) is None or fresh[scope].rpm is None:
                    del self._calls[scope]
            for scope in list(self._tokens):
                if fresh.get(scope) is None or fresh[scope].tpm is None:
                    del self._tokens[scope]

    def counts_tokens(self, tenant: str, department: str, key_id: int | None = None) -> bool:
        """Whether a tpm limit covers the caller: its call's prompt is then counted at admission."""
        limits = self._limits
        return any(
            (limit := limits.get(scope)) is not None and limit.tpm is not None
            for scope in _scopes(tenant, department, key_id)
        )

    async def admit_request(
        self,
        request: MeteredRequest,
        charged: Attribution,
        key_id: int | None = None,
        *,
        inline: bool = True,
    ) -> Admission:
        """:meth:`admit` for a call of ``request``, its prompt counted where a tpm limit covers
        it (worked out in a thread unless ``inline``: a large body takes a while to read)."""
        tenant, department = charged.tenant, charged.department
        tokens = images = 0
        if self.counts_tokens(tenant, department, key_id):
            tokens, images = (
                prompt_tokens(request) if inline else await in_thread(prompt_tokens, request)
            )
        return self.admit(tenant, department, key_id, tokens=tokens, images=images)

    def admit(
        self,
        tenant: str,
        department: str,
        key_id: int | None = None,
        *,
        tokens: int = 0,
        images: int = 0,
    ) -> Admission:
        """Count one call, and its prompt's ``tokens`` and ``images`` under tpm limits, against
        its limits; :class:`OverLimit` (counting nothing) if that takes it over one.

        Pictures count :data:`IMAGE_TOKENS_SEEN` each, but at most a whole minute: a model
        may count one as a few tokens, so they never make a call one no wait lets in."""
        if not self._limits:  # none in force (the most common case): nothing to count
            return Admission((tenant, department), 1, self._caps(tenant, department, key_id))
        tokens = max(tokens, 0)
        seen = tokens + max(images, 0) * IMAGE_TOKENS_SEEN
        with self._lock:
            # Read under the lock, as a call ending on another thread does: each window's
            # log stays in time order, which trimming and Retry-After rely on.
            now = self.clock()
            found = [
                (scope, limit)
                for scope in _scopes(tenant, department, key_id)
                if (limit := self._limits.get(scope)) is not None
            ]
            worst: tuple[int, str] | None = None
            for scope, limit in found:
                if limit.tpm is not None and tokens > limit.tpm:
                    raise OverLimit(
                        f"this call's prompt is about {tokens:,} tokens, more than "
                        f"{limit.scope()}'s limit of {limit.tpm:,} tokens a minute, so no wait "
                        "would let it in: shorten it, or raise the limit (`ometer limit set`)",
                        retry_after=None,
                    )
                share = seen if limit.tpm is None else min(seen, limit.tpm)
                for windows, most, what, need in (
                    (self._calls, limit.rpm, "calls", 1),
                    (self._tokens, limit.tpm, "tokens", max(share, 1)),
                ):
                    if most is None:
                        continue
                    window = windows.setdefault(scope, _Window())
                    window.trim(now)
                    wait = window.wait_ns(now, most - need + 1)  # room for what it adds
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
            counted: list[_Held] = []
            prompt: list[_Held] = []
            for scope, limit in found:
                if limit.rpm is not None:
                    calls = self._calls[scope]
                    counted.append((calls, calls.add(now, 1)))
                if limit.tpm is not None and seen > 0:
                    window = self._tokens[scope]
                    prompt.append((window, window.add(now, min(seen, limit.tpm))))
                if limit.weight is not None and scope[0] != "key":
                    weight = limit.weight  # the department's, over the tenant's (it comes after)

        def undo() -> None:
            with self._lock:
                _give_back(counted)
                _give_back(prompt)

        taken = undo if counted or prompt else _nothing
        caps = self._caps(tenant, department, key_id)
        return Admission((tenant, department), weight or 1, caps, taken, prompt)

    def _caps(self, tenant: str, department: str, key_id: int | None) -> tuple[_Places, ...]:
        # Every scope, limited or not: a limit set later counts the calls running now.
        return tuple(
            _Places(self._running, self._in_force, scope, tenant, department)
            for scope in _scopes(tenant, department, key_id)
        )

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

    def bind(
        self,
        span_id: str,
        key_id: int | None,
        admission: Admission | None = None,
        *,
        was: str | None = None,
    ) -> None:
        """The call ``span_id`` was made with key ``key_id`` (its tokens count there too) and
        admitted as ``admission`` (its prompt's count is given back when it ends). ``was``: the
        call bound so is recorded as ``span_id`` instead (by a gateway behind this one)."""
        if was is not None:
            with self._lock:
                if (key := self._keys.pop(was, None)) is not None:
                    self._keys[span_id] = key
                if (prompt := self._prompts.pop(was, None)) is not None:
                    self._prompts[span_id] = prompt
            return
        keyed = key_id is not None and ("key", str(key_id)) in self._limits
        if keyed or (admission is not None and admission.prompt):
            with self._lock:
                if len(self._keys) + len(self._prompts) > 100_000:  # spans always end: a bug
                    self._keys.clear()
                    self._prompts.clear()
                if keyed and key_id is not None:
                    self._keys[span_id] = key_id
                if admission is not None and admission.prompt:
                    self._prompts[span_id] = admission.prompt

    # -- a span observer: tokens count when a call ends --------------------------------------

    leaves_spans = True  # reads them only (``_observers.may_change_spans``)
    counts_only = True  # never reads what a request asked (``_observers.reads_requests``)

    def on_start(self, span: SpanRecord) -> None:
        pass

    def on_end(self, span: SpanRecord) -> None:
        tokens = span.input_tokens + span.output_tokens
        with self._lock:
            key_id = self._keys.pop(span.id, None)
            _give_back(self._prompts.pop(span.id, []))  # its own tokens count instead
            if tokens <= 0 or (not self._tokens and not self._limits):
                return
            now = self.clock()
            for scope in _scopes(span.tenant, span.department, key_id):
                limit = self._limits.get(scope)
                if limit is not None and limit.tpm is not None:
                    window = self._tokens.setdefault(scope, _Window())
                    window.trim(now)
                    window.add(now, tokens)

    on_recorded_elsewhere = on_end  # a gateway behind this one recorded it: it counts here too
