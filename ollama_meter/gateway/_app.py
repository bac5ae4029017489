"""The gateway ASGI app: Ollama's API in front of Ollama, every inference call metered.

Only this package imports the web framework. Metered routes go through the one
meter (budgets, pricing, telemetry, alerts included); read-only routes pass
through; model management is refused unless allowed. Who may call what is
``_access.py``'s policy. Errors keep Ollama's ``{"error": ...}`` shape (OpenAI's
on ``/v1``); a client mistake is a 4xx and a span, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ollama_meter.config import Settings
from ollama_meter.errors import LedgerError, UpstreamError, ValidationError
from ollama_meter.gateway import _metrics as metrics
from ollama_meter.gateway._access import (
    TooLarge,
    Unauthenticated,
    bearer,
    presented_key,
    read_body,
    token_matches,
)
from ollama_meter.gateway._attribution import Forbidden, resolve
from ollama_meter.gateway._dash import dashboard_routes
from ollama_meter.gateway._limits import MAX_BODY_BYTES
from ollama_meter.gateway._relay import Relay, error_response, forward_headers
from ollama_meter.gateway._requests import (
    OLLAMA_ROUTES,
    OPENAI_ROUTES,
    BadRequest,
    operation_of,
    parse_request,
)
from ollama_meter.gateway._retention import prune_daily
from ollama_meter.gateway._threads import in_thread
from ollama_meter.gateway._upstream import UpstreamPool, finish, gateway_status
from ollama_meter.ledger import KEY_PREFIX, ApiKey
from ollama_meter.meter import Attribution, Meter

log = logging.getLogger("ollama_meter.gateway")

PASSTHROUGH = ("/api/tags", "/api/ps", "/api/show", "/api/version", "/v1/models", "/")
ADMIN = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
_NO_BODY = frozenset({"GET", "HEAD"})

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    require_key: bool = False
    allow_admin: bool = False
    admin_token: str | None = None
    default_user: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def guarded(self) -> bool:
        """Whether anything is asked of callers at all."""
        return self.require_key or bool(self.admin_token)


@dataclass
class _State:
    """What the app holds while it runs (set up by the lifespan)."""

    meter: Meter
    pool: UpstreamPool
    relay: Relay


class _Refused(Exception):
    """A request turned away before any work, with the answer to send."""

    def __init__(self, response: Response) -> None:
        self.response = response


def create_app(
    settings: Settings, options: GatewayOptions | None = None, *, meter: Meter | None = None
) -> Starlette:
    """The gateway for ``settings.ollama_host`` (the upstream)."""
    opts = options or GatewayOptions()
    unauthenticated = Unauthenticated()
    running: list[_State] = []

    def state() -> _State:
        return running[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_meter = meter or Meter.from_settings(settings, source="gateway")
        metrics.install(the_meter)  # /metrics counts from the first call on
        pool = UpstreamPool(settings.ollama_host, timeout=settings.upstream_timeout)
        running.append(_State(the_meter, pool, Relay(the_meter, pool)))
        retention = None
        if settings.keep_days is not None:
            retention = asyncio.create_task(prune_daily(the_meter.ledger, settings.keep_days))
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
            running.clear()
            await pool.aclose()
            if the_meter.budgets is not None:  # give back the budget leases not in use
                await in_thread(the_meter.budgets.close)

    def refuse_unauthenticated(request: Request, message: str) -> _Refused:
        path = request.url.path
        unauthenticated.refused(path, request.client.host if request.client else "?")
        return _Refused(
            error_response(
                path.startswith("/v1/"), 401, message, headers={"WWW-Authenticate": "Bearer"}
            )
        )

    async def key_of(request: Request) -> ApiKey | None:
        """The live key the caller presented (None: none presented, or not a live key)."""
        secret = presented_key(request)
        if secret is None or not secret.startswith(KEY_PREFIX):
            return None  # not one of ours (an OpenAI client sends its api_key): no ledger read

        found: ApiKey | None = await in_thread(state().meter.ledger.find_key, secret)
        return found

    async def required_key(request: Request) -> ApiKey:
        """The caller's live key, or :class:`_Refused` (401; 503 when keys cannot be checked)."""
        try:
            key = await key_of(request)
        except LedgerError as exc:
            raise _Refused(
                error_response(
                    request.url.path.startswith("/v1/"),
                    503,
                    f"the API key cannot be checked, so the call was not made: {exc}",
                    headers={"Retry-After": "5"},
                )
            ) from None
        if key is None:
            raise refuse_unauthenticated(
                request,
                "a valid API key is required: send `Authorization: Bearer <key>` "
                "(see `ometer keys create`)",
            )
        return key

    async def optional_key(request: Request) -> ApiKey | None:
        """A presented key when keys are not required; its owner is charged when headers are not."""
        try:
            return await key_of(request)
        except LedgerError as exc:
            message = f"the API key cannot be checked, so the call was not made: {exc}"
            raise _BadCall(503, "ledger_unavailable", message) from None

    async def admin_only(request: Request, *, in_query: bool = False) -> None:
        """The admin token when one is set; else a key when keys are required.

        ``in_query``: the gateway's own pages also take ``?token=`` (links in a browser);
        a route forwarded to Ollama never does, or the token would travel on in the URL.
        """
        if opts.admin_token:
            given = bearer(request) or (request.query_params.get("token") if in_query else None)
            if not token_matches(given, opts.admin_token):
                how = "Authorization: Bearer <token>" + (" or ?token=" if in_query else "")
                raise refuse_unauthenticated(request, f"this needs the admin token: {how}")
        elif opts.require_key:
            await required_key(request)

    async def metered(request: Request) -> Response:
        path = request.url.path
        openai = path in OPENAI_ROUTES
        the_meter = state().meter
        # Who a refusal is charged to: the caller when known, else the key's owner or defaults.
        charged = Attribution(tenant=settings.tenant, department=settings.department)
        try:
            key = await (required_key(request) if opts.require_key else optional_key(request))
            if key is not None:
                charged = Attribution(tenant=key.tenant, department=key.department)
            problem: Exception | None = None
            try:
                charged = resolve(
                    request.headers,
                    key,
                    settings,
                    require_key=opts.require_key,
                    default_user=opts.default_user,
                )
            except (Forbidden, ValidationError) as exc:
                problem = exc
            try:
                raw = await read_body(request, opts.max_body_bytes)
            except TooLarge as exc:
                raise _BadCall(413, "bad_request", str(exc)) from None
            try:
                parsed = parse_request(path, raw)
            except BadRequest as exc:
                raise _BadCall(400, "bad_request", str(exc), model=exc.model) from None
            if isinstance(problem, Forbidden):
                raise _BadCall(403, "forbidden", str(problem), model=parsed.model)
            if problem is not None:
                raise _BadCall(400, "bad_request", str(problem), model=parsed.model)
        except _Refused as refused:
            return refused.response
        except _BadCall as bad:
            refusal = functools.partial(
                the_meter.refuse,
                operation=operation_of(path),
                model=bad.model,
                attribution=charged,
                error_type=bad.error_type,
                message=bad.message,
                http_status=bad.status,
            )
            await in_thread(refusal)
            # A body too large may still be arriving: this connection is done.
            close = {"Connection": "close"} if bad.status == 413 else None
            return error_response(openai, bad.status, bad.message, headers=close)
        return await state().relay.metered(parsed, request.headers, charged, request.url.query)

    async def forward(request: Request, *, body: bytes | None) -> Response:
        pool = state().pool
        try:
            response = await pool.request(
                request.method,
                request.url.path,
                body=body,
                query=request.url.query,
                headers=forward_headers(request.headers),
            )
        except UpstreamError as exc:
            return error_response(request.url.path.startswith("/v1"), gateway_status(exc), str(exc))

        async def relayed() -> AsyncIterator[bytes]:
            try:
                async for chunk in pool.chunks(response):
                    yield chunk
            except UpstreamError as exc:
                log.warning("passing %s through: %s", request.url.path, exc)
            finally:
                finish(response, completed=response.content.at_eof())

        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower()
            not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        }
        return StreamingResponse(relayed(), status_code=response.status, headers=headers)

    async def passthrough(request: Request) -> Response:
        try:
            if opts.require_key:
                await required_key(request)
            # A body on GET/HEAD is never forwarded: an upstream that ignores it would
            # read it as the next request on the kept-alive connection (smuggling).
            body = (
                None
                if request.method in _NO_BODY
                else await read_body(request, opts.max_body_bytes)
            )
        except _Refused as refused:
            return refused.response
        except TooLarge as exc:
            return error_response(False, 413, str(exc), headers={"Connection": "close"})
        return await forward(request, body=body)

    async def admin(request: Request) -> Response:
        if not opts.allow_admin:
            return error_response(
                False,
                403,
                f"{request.url.path} manages models and is refused by the gateway; "
                "start `ometer serve --allow-admin` to allow it",
            )
        try:
            await admin_only(request)
            body = await read_body(request, opts.max_body_bytes)
        except _Refused as refused:
            return refused.response
        except TooLarge as exc:
            return error_response(False, 413, str(exc), headers={"Connection": "close"})
        return await forward(request, body=body)

    def guard(endpoint: Endpoint, path: str) -> Endpoint:
        async def guarded(request: Request) -> Response:
            try:
                await admin_only(request, in_query=True)
            except _Refused as refused:
                return refused.response
            response = await endpoint(request)
            body = getattr(response, "body", None)
            if path == "/metrics" and response.status_code == 200 and isinstance(body, bytes):
                # This process's refusals, after the other series.
                text = body + unauthenticated.prometheus().encode()
                return Response(text, media_type=response.media_type)
            return response

        return guarded

    async def healthz(request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            await in_thread(state().meter.ledger.count)
            checks["ledger"] = "ok"
        except Exception as exc:
            checks["ledger"] = f"failed: {exc}"
        try:
            reply = await state().pool.request("GET", "/api/version", timeout=3.0)
            finish(reply, completed=False)
            checks["upstream"] = "ok" if reply.status == 200 else f"HTTP {reply.status}"
        except UpstreamError as exc:
            checks["upstream"] = f"unreachable: {exc}"
        healthy = all(v == "ok" for v in checks.values())
        if opts.guarded:  # open to anyone: say what failed, not how
            checks = {name: value.split(":")[0] for name, value in checks.items()}
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", **checks},
            status_code=200 if healthy else 503,
        )

    routes = [
        *(Route(path, metered, methods=["POST"]) for path in (*OLLAMA_ROUTES, *OPENAI_ROUTES)),
        *(Route(path, passthrough, methods=["GET", "POST", "HEAD"]) for path in PASSTHROUGH),
        *(Route(path, admin, methods=["POST", "DELETE", "PUT"]) for path in ADMIN),
        Route("/healthz", healthz, methods=["GET"]),
        *(
            Route(route.path, guard(route.endpoint, route.path), methods=["GET"])
            for route in dashboard_routes(lambda: state().meter, settings)
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class _BadCall(Exception):
    """A metered request refused before metering could start: answered, and written as a span."""

    def __init__(self, status: int, error_type: str, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.model = model
