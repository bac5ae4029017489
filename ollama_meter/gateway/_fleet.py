"""Several Ollama servers behind one gateway: which has which model, and where a call goes.

Owns the servers (:class:`Server`: its pool, breaker, slots and what it was last
seen to have), their discovery (``/api/tags`` and ``/api/ps``, refreshed in the
background), the routing rule, and the union answers of ``/api/tags``,
``/api/ps`` and ``/v1/models``. Waiting for a slot is the fair queue's job
(``_queue.py``); this module only says, each time a place may be free, which
server a call could take.

**Routing.** A call goes to a server that has its model and is answering (not
down at the last discovery, host and model circuits not open, nor the circuit its
caller has there for the model); failing that, to
one that has the model (its breaker then fails the call fast with its reason);
failing that (nobody has it), to any answering server, which says "not found" or
serves a model pulled since the last discovery. Among those with a free slot it
prefers one where the model is loaded (no cold load), then the least busy, then
the one given fewest calls, so calls spread over servers sharing a model.

With one server there is nothing to choose: no discovery runs, and the server
is what ``OLLAMA_HOST`` always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ollama_meter._urls import UpstreamSpec
from ollama_meter.config import Settings
from ollama_meter.errors import UpstreamError, UpstreamTimeout
from ollama_meter.gateway._json import INLINE_PARSE_BYTES
from ollama_meter.gateway._model_names import list_answer, name_of, names, read_as_key
from ollama_meter.gateway._queue import Capacity, FairQueue, Grant, Place, Where
from ollama_meter.meter import Source
from ollama_meter.meter._wiring import transport_for
from ollama_meter.records import model_key
from ollama_meter.upstream import CallAttempts, PooledUpstream, Waits, caller_of

log = logging.getLogger("ollama_meter.gateway")

DISCOVERY_SECONDS = 10.0
"""How often each server's models (``/api/tags``) and loaded models (``/api/ps``) are read."""
DISCOVERY_TIMEOUT = 5.0
MODEL_LIST_BYTES = 8 * 1024 * 1024
"""The most of a server's ``/api/tags``, ``/api/ps`` or ``/v1/models`` read: tens of thousands
of models. Each is parsed on the event loop, every few seconds: a server answering the
general 64 MiB limit would stall every call for a second each time."""
UNION = ("/api/tags", "/api/ps", "/v1/models")
"""Answered with every server's models when there are several."""
_REQUIRED: Any = object()


class Server(Capacity):
    """One Ollama server: its slots (a :class:`Capacity`), its pooled transport and its models.

    The transport carries the server's breaker and the one retry policy.
    """

    def __init__(self, spec: UpstreamSpec, pool: PooledUpstream) -> None:
        super().__init__(spec.slots, spec.url)
        self.url = spec.url
        self.pool = pool
        self.breaker = pool.breaker
        self.models: frozenset[str] | None = None
        """What ``/api/tags`` listed (model keys); None until discovered: anything."""
        self.loaded: set[str] = set()
        self.up = True
        self.problem: str | None = None
        self.checked_at: datetime | None = None
        self.served = 0
        """Calls it answered (``/api/dash``)."""
        self.given = 0
        """Calls it was given a slot for, answered or not: routing spreads calls by it."""

    def has(self, model: str) -> bool:
        return self.models is None or model in self.models

    def answering(self, model: str, caller: str = "") -> bool:
        """Up, and no circuit open to ``caller``'s calls to ``model`` (its own one either)."""
        return self.up and not self.breaker.any_open(model, caller)

    def state(self) -> str:
        if not self.up:
            return "down"
        return "open" if self.breaker.state() == "open" else "up"

    def busy(self) -> float:
        return self.in_use / self.limit if self.limit else float(self.in_use)

    def describe(self, *, details: bool = True) -> dict[str, Any]:
        """What ``/healthz`` and ``/api/dash`` say about the server; without ``details`` (an
        open ``/healthz`` of a guarded gateway) its state alone, not its URL: reached directly,
        Ollama is called unmetered and with no key."""
        if not details:
            return {"state": self.state()}
        shown: dict[str, Any] = {"url": self.url, "state": self.state()}
        shown.update(
            slots=self.limit,
            in_flight=self.in_use,
            served=self.served,
            models=sorted(self.models) if self.models is not None else None,
            loaded=sorted(self.loaded),
            problem=self.problem,
            checked_at=self.checked_at.isoformat() if self.checked_at else None,
        )
        return shown


class Lease:
    """A call's place on one server, and how long it waited. Give it back with :meth:`release`."""

    __slots__ = ("_grant", "server")

    def __init__(self, server: Server, grant: Grant) -> None:
        self.server = server
        self._grant = grant

    @property
    def waited_ns(self) -> int:
        return self._grant.waited_ns

    def attempts(
        self, model: str, *, elsewhere: bool, waits: Waits | None = None, caller: str = ""
    ) -> CallAttempts:
        """The call's way through this server's breaker (CircuitOpen if closed to it).

        ``elsewhere``: another server can take the call, so a transient failure here ends
        this server's part at once and the call moves on (the move is its retry); else
        the server's own retry policy applies. ``waits``: who is told of the waits
        between attempts. ``caller``: whose call it is, for the model's circuit.
        """
        pool = self.server.pool
        retry = replace(pool.retry, retries=0) if elsewhere else pool.retry
        # One circuit per model, however the call spells it: the one routing asks about.
        return CallAttempts(
            pool.breaker, retry, model, circuit=model_key(model), waits=waits, caller=caller
        )

    def release(self) -> None:
        self._grant.release()


class Fleet:
    """The servers behind the gateway, their discovery, their slots and the fair queue."""

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        max_queue: int,
        queue_timeout: float | None = None,
        discovery: float = DISCOVERY_SECONDS,
    ) -> None:
        self.servers = list(servers)
        self.queue = FairQueue(max_queue)
        self.queue_timeout = queue_timeout
        self.discovery = discovery
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, first: PooledUpstream | None = None) -> Fleet:
        """The servers of ``settings`` (``OMETER_UPSTREAMS`` or ``OLLAMA_HOST``), their slots and queue.

        ``first``: a transport already made for the first server (the meter's).
        """
        servers = []
        for spec in settings.upstream_specs:
            pool = first if first is not None and first.host == spec.url else None
            if pool is None:
                made = transport_for(settings, Source.GATEWAY, host=spec.url)
                assert isinstance(made, PooledUpstream)
                pool = made
            servers.append(Server(spec, pool))
        return cls(
            servers,
            max_queue=settings.max_queue,
            queue_timeout=settings.upstream_timeout,
            discovery=settings.discovery_interval,
        )

    @property
    def several(self) -> bool:
        return len(self.servers) > 1

    @property
    def first(self) -> Server:
        return self.servers[0]

    # -- discovery ------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn every server's models once, then keep them fresh in the background."""
        if not self.several:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._rediscover())

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(self.discovery)
            try:
                await self.refresh()
            except Exception:  # a bug must not end discovery for good
                log.exception("discovering the servers' models failed")

    async def refresh(self) -> None:
        await asyncio.gather(*(self._discover(server) for server in self.servers))
        self.queue.kick()  # a server came back, or has a model a waiting call wants

    async def _discover(self, server: Server) -> None:
        try:
            tags = await self._get(server, "/api/tags")
            # An Ollama older than /api/ps (0.1.38), or a compatible server, answers it 404:
            # it serves its models all the same, with none known to be loaded.
            running = await self._get(server, "/api/ps", missing=None)
        except (UpstreamError, ValueError) as exc:
            if server.up:
                log.warning("taking %s out of the fleet: %s", server.url, exc)
            server.up, server.problem = False, str(exc)
        else:
            if not server.up:
                log.warning("%s answers again; it is back in the fleet", server.url)
            server.breaker.answered()  # back at once, not after the breaker's reset
            server.models = frozenset(names(tags, "models", "model"))
            server.loaded = set(names(running, "models", "model"))
            server.up, server.problem = True, None
        server.checked_at = datetime.now(UTC)

    async def _get(self, server: Server, path: str, *, missing: Any = _REQUIRED) -> Any:
        """``path``'s JSON on ``server``; ``missing`` if given, when the server has no such
        route (404), else a ValueError saying what it answered."""
        try:
            response = await server.pool.request("GET", path, timeout=DISCOVERY_TIMEOUT)
            try:
                body = await server.pool.read(response, most=MODEL_LIST_BYTES)
            finally:
                server.pool.finish(response, completed=response.content.at_eof())
        except UpstreamTimeout:  # its own words advise OMETER_UPSTREAM_TIMEOUT, not this one's
            raise ValueError(
                f"{server.url}{path} did not answer in {DISCOVERY_TIMEOUT:g} s"
            ) from None
        if response.status == 404 and missing is not _REQUIRED:
            return missing
        if response.status != 200:
            raise ValueError(f"{server.url}{path} answered HTTP {response.status}")
        # A list of thousands of models takes a tenth of a second to read: not on the event
        # loop, where every call through the gateway would wait for it, each discovery.
        if len(body) <= INLINE_PARSE_BYTES:
            return list_answer(body, f"{server.url}{path}")
        return await asyncio.to_thread(list_answer, body, f"{server.url}{path}")

    def took_out(self, server: Server, problem: str) -> None:
        """A call found ``server`` not answering: route around it until discovery sees it back."""
        if self.several and server.up:
            log.warning("taking %s out of the fleet: %s", server.url, problem)
            server.up, server.problem = False, problem

    def lacks(self, server: Server, model: str) -> None:
        """``server`` said it has no ``model``: not routed there until discovery lists it again;
        not for a name Ollama reads as no model (:func:`read_as_key`): one caller's typo took
        the model it looks like off every server it tried, and others' calls went elsewhere."""
        if not read_as_key(model):
            return
        if server.models is not None:
            server.models = server.models - {model_key(model)}
        server.loaded.discard(model_key(model))

    def answering(self, server: Server, model: str) -> Callable[[BaseException | None], None]:
        """``model`` answered on ``server`` (its 200): it is loaded there now, if the server
        lists it (a server that answers any name a caller makes up filled the set, for ever
        with one server). Returns what counts the call as one the server served when the
        call ends, as it ended: one the server failed on the way (a stream broken off,
        stalled, or ended in an error) is not."""
        if server.models is not None and (key := model_key(model)) in server.models:
            server.loaded.add(key)

        counted = False

        def ended(outcome: BaseException | None) -> None:
            nonlocal counted
            if not (counted or isinstance(outcome, UpstreamError)):  # (its caller may have left)
                counted = True
                server.served += 1

        return ended

    # -- routing --------------------------------------------------------------------------

    def _tier(self, model: str, exclude: frozenset[str], caller: str = "") -> list[Server]:
        pool = [s for s in self.servers if s.url not in exclude]
        for tier in (
            [s for s in pool if s.has(model) and s.answering(model, caller)],
            [s for s in pool if s.has(model)],
            [s for s in pool if s.answering(model, caller)],
        ):
            if tier:
                return tier
        return pool

    def _placing(self, model: str, tried: Iterable[str], caller: str) -> tuple[Place, Where]:
        """Where ``caller``'s call to ``model`` can go now (not to ``tried``), and what that
        depends on."""
        key, exclude = model_key(model), frozenset(tried)
        return lambda: self._place(key, exclude, caller), (key, exclude, caller)

    def _place(self, model: str, exclude: frozenset[str], caller: str) -> Server | None:
        free = [s for s in self._tier(model, exclude, caller) if s.free]
        if not free:
            return None
        # Without --slots the gateway cannot tell when Ollama starts queueing: a server
        # with a call in flight counts as busy, so an idle one is tried first.
        return min(
            free,
            key=lambda s: (
                s.limit is None and s.in_use > 0,
                model not in s.loaded,
                s.busy(),
                s.given,
            ),
        )

    def can_move(self, model: str, tried: set[str], caller: str = "") -> bool:
        """Whether a server not yet ``tried`` has ``model`` and is answering ``caller``."""
        key = model_key(model)
        return any(
            s.url not in tried and s.has(key) and s.answering(key, caller) for s in self.servers
        )

    def lease_now(
        self, model: str, flow: tuple[str, str], *, weight: int = 1, caps: Sequence[Capacity] = ()
    ) -> Lease | None:
        """A slot at once when one is free and nobody waits for one; else None (then :meth:`lease`)."""
        place, where = self._placing(model, (), caller_of(*flow))
        grant = self.queue.grant_now(flow, place, weight=weight, caps=caps, where=where)
        return None if grant is None else self._leased(grant)

    def _leased(self, grant: Grant) -> Lease:
        server = grant.server
        assert isinstance(server, Server)
        server.given += 1
        return Lease(server, grant)

    async def lease(
        self,
        model: str,
        flow: tuple[str, str],
        *,
        weight: int = 1,
        caps: Sequence[Capacity] = (),
    ) -> Lease:
        """A slot for a call to ``model``: at once, or after waiting its flow's turn.

        Raises :class:`~ollama_meter.gateway._queue.Busy`.
        """
        place, where = self._placing(model, (), caller_of(*flow))
        grant = await self.queue.acquire(
            flow, place, weight=weight, caps=caps, timeout=self.queue_timeout, where=where
        )
        return self._leased(grant)

    async def move(self, lease: Lease, model: str, tried: set[str], caller: str = "") -> Lease:
        """Another server for the call holding ``lease`` (not one of ``tried``), ahead of the
        queue; the call keeps its places under its limits (``caps``) meanwhile.

        Raises :class:`~ollama_meter.gateway._queue.Busy`.
        """
        place, where = self._placing(model, tried, caller)
        grant = await self.queue.move(lease._grant, place, timeout=self.queue_timeout, where=where)
        return self._leased(grant)

    def server_for(self, model: str | None) -> Server:
        """Where a call that needs no slot goes (``/api/show``, model management)."""
        if model is None or not self.several:
            return next((s for s in self.servers if s.up), self.first)
        return min(self._tier(model_key(model), frozenset()), key=lambda s: s.busy())

    # -- answers --------------------------------------------------------------------------

    async def union(self, path: str) -> dict[str, Any]:
        """``/api/tags``, ``/api/ps`` or ``/v1/models`` of every answering server, merged by name.

        Raises :class:`UpstreamError` when no server answered.
        """
        # A server found down is not waited for (it may take the whole timeout to say nothing).
        asked = [s for s in self.servers if s.up] or self.servers
        # A server with no /api/ps (an Ollama older than 0.1.38) answers with nothing loaded,
        # as discovery has it: not as one that does not answer.
        missing = {"models": []} if path == "/api/ps" else _REQUIRED
        answers = await asyncio.gather(
            *(self._get(s, path, missing=missing) for s in asked), return_exceptions=True
        )
        openai = path == "/v1/models"
        field, name = ("data", "id") if openai else ("models", "model")
        merged: dict[str, Any] = {}
        failures = []
        for server, answer in zip(asked, answers, strict=True):
            if isinstance(answer, BaseException):
                failures.append(f"{server.url}: {answer}")
                continue
            items = answer.get(field) if isinstance(answer, dict) else None
            for item in items if isinstance(items, list) else []:
                if (named := name_of(item, name)) is not None:
                    merged.setdefault(model_key(named), item)
        if len(failures) == len(asked):
            raise UpstreamError("no Ollama server answered: " + "; ".join(failures))
        items = list(merged.values())
        return {"object": "list", "data": items} if openai else {"models": items}

    async def health(self) -> str:
        """``ok``, or what is wrong: with several servers one must answer (discovery says)."""
        if self.several:
            up = any(s.state() == "up" for s in self.servers)
            return "ok" if up else "unreachable: no server answers"
        pool = self.first.pool
        try:
            reply = await pool.request("GET", "/api/version", timeout=3.0)
        except UpstreamError as exc:
            return f"unreachable: {exc}"
        pool.finish(reply, completed=False)
        return "ok" if reply.status == 200 else f"HTTP {reply.status}"

    def describe(self, *, details: bool = True) -> dict[str, Any]:
        """Each server's state and the queue's, for ``/healthz`` and ``/api/dash``."""
        shown: dict[str, Any] = {
            "servers": [server.describe(details=details) for server in self.servers]
        }
        if details:
            by_flow = self.queue.waiting_by_flow()
            shown["queue"] = {
                "waiting": self.queue.waiting,
                "by_department": {
                    f"{key[0]}/{key[1]}": count
                    for key, count in by_flow.items()
                    if count and isinstance(key, tuple)
                },
            }
        return shown

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for server in self.servers:
            await server.pool.aclose()
