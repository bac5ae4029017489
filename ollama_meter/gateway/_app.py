"""The gateway ASGI app: Ollama's API in front of Ollama, every inference call metered.

Only this package imports the web framework. :func:`create_app` declares the
routes; its lifespan starts a :class:`Gateway` (the meter, the fleet of Ollama
servers, the limits, the background tasks) and hands it to every request as
Starlette's lifespan state, so nothing lives in closures or globals. Metered
routes go through the one meter (budgets, pricing, telemetry, alerts included)
and wait their turn for a slot; read-only routes pass through (``_passthrough.py``);
model management is refused unless allowed. Who may call what is ``_access.py``'s
policy. Errors keep the route's wire format (Ollama's ``{"error": ...}``,
OpenAI's on ``/v1``); a client mistake is a 4xx and a span, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ollama_meter.config import Settings
from ollama_meter.errors import ValidationError
from ollama_meter.gateway import _metrics as metrics
from ollama_meter.gateway._access import (
    TOKEN_IN_QUERY,
    Access,
    BadCall,
    GatewayOptions,
    Refused,
    unrouted,
)
from ollama_meter.gateway._answers import error_response, final_unless_told
from ollama_meter.gateway._attribution import Forbidden, in_trace, resolve, vouched
from ollama_meter.gateway._dash import KEY_SCOPE, METRICS_NEED_TOKEN, NO_STORE, dashboard_routes
from ollama_meter.gateway._drain import Drain, drained
from ollama_meter.gateway._fleet import Fleet
from ollama_meter.gateway._health import LEDGER, UPSTREAM, SharedCheck, ledger_health
from ollama_meter.gateway._hosts import guard
from ollama_meter.gateway._json import INLINE_PARSE_BYTES
from ollama_meter.gateway._ledger_name import LedgerName
from ollama_meter.gateway._memory import Unread, body_memory, read_body
from ollama_meter.gateway._origins import allowed_origins, origin_check
from ollama_meter.gateway._passthrough import BLOBS, PASSTHROUGH, forward
from ollama_meter.gateway._rates import OverLimit, RateLimits
from ollama_meter.gateway._rates_kept import keep_limits, read_limits
from ollama_meter.gateway._relay import Relay, wire_of
from ollama_meter.gateway._requests import (
    OLLAMA_ROUTES,
    OPENAI_ROUTES,
    BadRequest,
    operation_of,
    parse_request,
)
from ollama_meter.gateway._retention import prune_daily
from ollama_meter.gateway._slots import hangup_of
from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import ApiKey
from ollama_meter.meter import Attribution, Meter, Source, Status
from ollama_meter.meter._behind import WriteBehind
from ollama_meter.meter._wiring import transport_for
from ollama_meter.upstream import OLLAMA, PooledUpstream

log = logging.getLogger("ollama_meter.gateway")

ADMIN = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
_NO_BODY = frozenset({"GET", "HEAD"})
REFRESH_SECONDS = 5.0  # how often the background task looks for prices and budgets due

Endpoint = Callable[[Request], Awaitable[Response]]
_REFUSAL_STATUS = {"rate_limited": Status.REJECTED, "client_abort": Status.CLIENT_ABORT}


class GatewayState(TypedDict):
    gateway: Gateway  # Starlette's lifespan state: what every request of a running app reaches


class Gateway:
    """One running gateway: its meter, its Ollama servers, its limits, its access policy, its routes."""

    def __init__(
        self, settings: Settings, options: GatewayOptions, meter: Meter, fleet: Fleet
    ) -> None:
        self.settings = settings
        self.options = options
        self.meter = meter
        self.fleet = fleet
        self.rates = RateLimits()
        self.relay = Relay(meter, fleet, keyed=options.require_key)
        self.access = Access(options, meter.ledger)
        self.ledger_name = LedgerName(meter.ledger)  # named on its answers
        self.ledger_check = SharedCheck(functools.partial(ledger_health, meter.ledger), LEDGER)
        self.upstream_check = SharedCheck(fleet.health, UPSTREAM)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, settings: Settings, options: GatewayOptions, meter: Meter | None = None
    ) -> AsyncIterator[Gateway]:
        """A gateway for as long as the app serves: background tasks started, then stopped."""
        meter = meter or Meter.from_settings(settings, source="gateway")
        upstream = meter.upstream
        if not isinstance(upstream, PooledUpstream):  # a meter built for another entry point
            upstream = transport_for(settings, Source.GATEWAY)
            assert isinstance(upstream, PooledUpstream)
        fleet = Fleet.from_settings(settings, first=upstream)
        gateway = cls(settings, options, meter, fleet)
        metrics.install(meter)  # /metrics counts from the first call on
        await in_thread(meter.keep_fresh)  # read now; calls read them; the task reloads them
        await in_thread(gateway.ledger_name.learn)
        behind = WriteBehind(meter)  # calls answer once their span is whole in the journal
        meter.observers.append(gateway.rates)  # tokens per minute count as calls end
        # In force before the first call: a restarted gateway meets every retrying client at once.
        await read_limits(meter.ledger, gateway.rates)
        await fleet.start()
        tasks = [
            asyncio.create_task(gateway._refresh_forever()),
            asyncio.create_task(keep_limits(meter.ledger, gateway.rates, fleet.queue)),
        ]
        if settings.keep_days is not None:
            tasks.append(asyncio.create_task(prune_daily(meter.ledger, settings.keep_days)))
        try:
            yield gateway
        finally:
            for task in tasks:
                task.cancel()
            # Each ends between pieces of its ledger work (a prune under way stops early and
            # says what it left), before the spans and leases below are settled.
            await asyncio.gather(*tasks, return_exceptions=True)
            meter.observers.remove(gateway.rates)
            await fleet.aclose()
            await in_thread(behind.stop)  # every span committed; their budgets settled
            if meter.budgets is not None:  # give back the budget leases not in use
                await in_thread(meter.budgets.close)

    async def _refresh_forever(self, every: float = REFRESH_SECONDS) -> None:
        """Reload prices and budgets when due, off the event loop, so calls never wait on it."""
        while True:
            await asyncio.sleep(every)
            await in_thread(self.meter.refresh)
            await in_thread(self.ledger_name.learn)  # if the ledger was away until now

    # -- routes ----------------------------------------------------------------------------

    def _attributed(
        self, request: Request, key: ApiKey | None, otherwise: Attribution
    ) -> tuple[Attribution, Exception | None]:
        """Whom the headers and ``key`` charge the call to; ``otherwise`` and why, if they cannot."""
        try:
            return resolve(
                request.headers,
                key,
                self.settings,
                require_key=self.options.require_key,
                default_user=self.options.default_user,
            ), None
        except (Forbidden, ValidationError) as exc:
            return otherwise, exc

    async def metered(self, request: Request) -> Response:
        path = request.scope["path"]  # request.url.path (matched exactly), no URL built
        wire = wire_of(path)
        options = self.options
        # Who a refusal is charged to: the caller when known, else what its key vouches for;
        # without keys required, what the headers name before the key is checked (or can't be).
        charged = vouched(None, self.settings, options.default_user)
        problem: Exception | None = None
        if not options.require_key:
            charged, problem = self._attributed(request, None, charged)
        try:
            door = self.access.required_key if options.require_key else self.access.optional_key
            key = await door(request)
            if key is not None or options.require_key:  # else read above, without a key
                vouching = vouched(key, self.settings, options.default_user)
                charged, problem = self._attributed(request, key, vouching)
            # A key revoked while a slow body arrived is refused as at the door (README, Security)
            again = None if key is None else functools.partial(door, request)
            try:
                raw = await read_body(request, options.max_body_bytes, again)
            except Unread as exc:
                raise BadCall(exc.status, exc.error_type, str(exc), headers=exc.headers) from None
            except ClientDisconnect:
                message = "the client hung up before its request body arrived"
                raise BadCall(499, "client_abort", message) from None
            try:
                # A large body takes milliseconds to check (a second at 100,000 messages):
                # not on the event loop, where every other call would wait for it.
                inline = len(raw) <= INLINE_PARSE_BYTES
                parsed = (
                    parse_request(path, raw)
                    if inline
                    else await asyncio.to_thread(parse_request, path, raw)
                )
            except BadRequest as exc:
                message = _unread_coding(exc, request) or str(exc)
                raise BadCall(400, "bad_request", message, model=exc.model) from None
            if isinstance(problem, Forbidden):
                raise BadCall(403, "forbidden", str(problem), model=parsed.model)
            if problem is not None:
                raise BadCall(400, "bad_request", str(problem), model=parsed.model)
            key_id = key.id if key is not None else None
            try:
                admission = await self.rates.admit_request(parsed, charged, key_id, inline=inline)
            except OverLimit as over:
                if over.retry_after is None:  # final: a 429 is retried (SDKs, wrappers), a 413 not
                    raise BadCall(413, "rate_limited", str(over), model=parsed.model) from None
                wait = {"Retry-After": str(over.retry_after)}
                raise BadCall(
                    429, "rate_limited", str(over), model=parsed.model, headers=wait
                ) from None
        except Refused as refused:
            return refused.response
        except BadCall as bad:
            refusal = functools.partial(
                self.meter.refuse,
                operation=operation_of(path),
                model=bad.model,
                attribution=in_trace(charged, request.headers),
                error_type=bad.error_type,
                message=bad.message,
                http_status=bad.status,
                status=_REFUSAL_STATUS.get(bad.error_type, Status.ERROR),
            )
            span = await in_thread(refusal)
            named = {**(bad.headers or {}), **self.ledger_name.naming(span.id)}
            return error_response(wire, bad.status, bad.message, headers=named, kind=bad.error_type)
        spans: list[str] = []  # the call's, once it is open: named to the caller in a header

        def bind(span_id: str) -> None:  # again: a gateway behind this one recorded the call
            self.rates.bind(span_id, key_id, admission, was=spans[-1] if spans else None)
            spans.append(span_id)

        # A call that waits its turn is sent only if its key is still live when it comes.
        recheck = None if key is None else functools.partial(self.access.still_live, request, key)
        answer = await self.relay.metered(
            parsed,
            wire,
            request.headers,
            in_trace(charged, request.headers),
            request.url.query if request.scope.get("query_string") else "",
            admission,
            bind=bind,
            hangup=hangup_of(request),
            recheck=recheck,
        )
        self.ledger_name.stamp(answer.headers, spans[-1] if spans else None)  # a refusal: its own
        final_unless_told(answer.status_code, answer.headers)
        return answer

    async def passthrough(self, request: Request) -> Response:
        try:
            door = self.options.require_key and functools.partial(self.access.required_key, request)
            if door:  # read again once a slow body has arrived, as for a metered call
                await door()
            # A body on GET/HEAD is never forwarded: an upstream that ignores it would
            # read it as the next request on the kept-alive connection (smuggling).
            body = (
                None
                if request.method in _NO_BODY
                else await read_body(request, self.options.max_body_bytes, door or None)
            )
        except Refused as refused:
            return refused.response
        except Unread as exc:
            return error_response(
                wire_of(request.url.path), exc.status, str(exc), headers=exc.headers
            )
        return self.ledger_name.told(request, await forward(self.fleet, request, body=body))

    async def admin(self, request: Request) -> Response:
        if not self.options.allow_admin:
            return error_response(
                OLLAMA,
                403,
                f"{request.url.path} manages models and is refused by the gateway; "
                "start `ometer serve --allow-admin` to allow it",
            )
        try:
            key = await self.access.admin_only(request)  # a key's: read again after a slow body
            again = functools.partial(self.access.required_key, request) if key else None
            if request.url.path.startswith(BLOBS):  # a model file: streamed, never held
                if request.method in _NO_BODY:
                    return await forward(self.fleet, request, body=None)
                upload = _Upload(request)
                answer = await forward(self.fleet, request, body=upload)
                if upload.broken is not None:  # the caller's side broke it, not Ollama's
                    raise upload.broken
                return answer
            body = await read_body(request, self.options.max_body_bytes, again)
        except Refused as refused:
            return refused.response
        except Unread as exc:
            return error_response(OLLAMA, exc.status, str(exc), headers=exc.headers)
        return await forward(self.fleet, request, body=body)

    async def healthz(self, request: Request) -> Response:
        ledger, upstream = await asyncio.gather(self.ledger_check(), self.upstream_check())
        checks = {"ledger": ledger, "upstream": upstream}
        healthy = all(v == "ok" for v in checks.values())
        if self.options.guarded:  # open to anyone: say what failed, not how
            checks = {name: value.split(":")[0] for name, value in checks.items()}
        servers = (
            self.fleet.describe(details=not self.options.guarded) if self.fleet.several else {}
        )
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", **checks, **servers},
            status_code=200 if healthy else 503,
        )

    async def own_page(self, request: Request, endpoint: Endpoint) -> Response:
        """The dashboard, ``/api/dash`` and ``/metrics``: behind the admin token; or, with keys
        required and no token, a key, for its own tenant and department's figures only.

        Every answer, a refusal too, is kept by no cache and read by no browser as another
        type than its own (``nosniff``): each may quote a caller's text."""
        response = await self._guarded_page(request, endpoint)
        response.headers.update(NO_STORE)
        return response

    async def _guarded_page(self, request: Request, endpoint: Endpoint) -> Response:
        path = request.url.path
        try:
            key = await self.access.admin_only(request, in_query=path in TOKEN_IN_QUERY)
        except Refused as refused:
            return refused.response
        if key is not None:
            if path not in TOKEN_IN_QUERY:  # /metrics: every tenant's counters
                return error_response(wire_of(path), 403, METRICS_NEED_TOKEN)
            request.scope[KEY_SCOPE] = (key.tenant, key.department)
        response = await endpoint(request)
        body = getattr(response, "body", None)
        if request.url.path == "/metrics" and response.status_code == 200 and type(body) is bytes:
            # This process's refusals, after the other series.
            text = body + self.access.unauthenticated.prometheus().encode()
            return Response(text, media_type=response.media_type, headers=NO_STORE)
        return response


def _gateway(request: Request) -> Gateway:
    state: GatewayState = request.state  # type: ignore[assignment]
    return state["gateway"]


def _via(method: Callable[[Gateway, Request], Awaitable[Response]]) -> Endpoint:
    """An endpoint that hands the request to the running gateway's ``method``."""

    async def endpoint(request: Request) -> Response:
        return await method(_gateway(request), request)

    return endpoint


def _own_page(endpoint: Endpoint) -> Endpoint:
    return _via(lambda gateway, request: gateway.own_page(request, endpoint))


def create_app(
    settings: Settings, options: GatewayOptions | None = None, *, meter: Meter | None = None
) -> Starlette:
    """The gateway for ``settings.ollama_host`` (the upstream); ``meter`` when one is given."""
    opts = options or GatewayOptions()
    urls = [spec.url for spec in settings.upstream_specs]
    if settings.ollama_host not in urls:  # what a call refused before routing names as its host
        settings = settings.model_copy(update={"ollama_host": urls[0]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[GatewayState]:
        async with Gateway.running(settings, opts, meter) as gateway:
            yield {"gateway": gateway}

    routes = [
        *(
            Route(path, _via(Gateway.metered), methods=["POST"])
            for path in (*OLLAMA_ROUTES, *OPENAI_ROUTES)
        ),
        *(
            Route(path, _via(Gateway.passthrough), methods=["GET", "POST", "HEAD"])
            for path in PASSTHROUGH
        ),
        *(Route(path, _via(Gateway.admin), methods=["POST", "DELETE", "PUT"]) for path in ADMIN),
        Route(f"{BLOBS}{{digest}}", _via(Gateway.admin), methods=["HEAD", "POST"]),
        Route("/healthz", _via(Gateway.healthz), methods=["GET"]),
        *(
            Route(route.path, _own_page(route.endpoint), methods=["GET"])
            for route in dashboard_routes(
                lambda request: _gateway(request).meter,
                settings,
                servers_of=lambda request: _gateway(request).fleet.describe(),
            )
        ),
    ]
    drain = Drain()  # the server (GatewayServer) ends it; calls it stops are answered
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ClientDisconnect: _client_left, 404: unrouted, 405: unrouted},
        middleware=[
            # Outermost: an allowed page reads every answer, the drain's and the guard's too.
            origin_check(allowed_origins(opts.origins)),
            drained(drain),
            guard(loopback=opts.loopback, token=opts.admin_token),
            body_memory(opts.max_body_bytes),
        ],
    )
    app.router.redirect_slashes = False  # it builds Location from Host: unrouted's is relative
    app.state.drain = drain
    return app


class _Upload:
    """A blob's body, streamed on as it arrives; why the caller's side broke it off, if it did
    (a chunk that cannot be parsed): Ollama's side then reads as unreachable."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.broken: Unread | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self.request.stream():
                yield part
        except Unread as exc:
            self.broken = exc
            raise


def _unread_coding(bad: BadRequest, request: Request) -> str | None:
    """Why a body sent compressed is no JSON, in words: Python's decoder says only that a
    byte is not UTF-8 (and Ollama, which decodes no request body either, that one is not
    JSON)."""
    coding = request.headers.get("content-encoding", "").strip()
    if not bad.not_json or coding.lower() in ("", "identity"):
        return None
    return (
        f"the request body is sent as Content-Encoding: {coding[:40]}, which neither the "
        "gateway nor Ollama decodes; send the JSON uncompressed"
    )


async def _client_left(request: Request, exc: Exception) -> Response:
    """A client that hung up mid-request is nobody's error: no traceback in the log, no answer."""
    return Response(status_code=499)
