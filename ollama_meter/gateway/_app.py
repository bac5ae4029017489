"""The gateway ASGI app: Ollama's API in front of Ollama, every inference call metered.

Only this package imports the web framework. Metered routes go through the one
meter (budgets, pricing, telemetry, alerts included); read-only routes pass
through; model management is refused unless allowed. Errors keep Ollama's
``{"error": ...}`` shape (OpenAI's on ``/v1``); a client mistake is never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ollama_meter.config import Settings
from ollama_meter.errors import LedgerError, UpstreamError, ValidationError
from ollama_meter.gateway import _metrics as metrics
from ollama_meter.gateway._attribution import Caller, Unauthorized, presented_key, resolve
from ollama_meter.gateway._dash import dashboard_routes
from ollama_meter.gateway._relay import (
    OLLAMA_ROUTES,
    OPENAI_ROUTES,
    Relay,
    error_response,
    forward_headers,
)
from ollama_meter.gateway._retention import prune_daily
from ollama_meter.gateway._threads import in_thread
from ollama_meter.gateway._upstream import UpstreamPool, finish, gateway_status
from ollama_meter.meter import Attribution, Meter

log = logging.getLogger("ollama_meter.gateway")

PASSTHROUGH = ("/api/tags", "/api/ps", "/api/show", "/api/version", "/v1/models", "/")
ADMIN = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    require_key: bool = False
    allow_admin: bool = False
    admin_token: str | None = None
    default_user: str | None = None


def create_app(
    settings: Settings, options: GatewayOptions | None = None, *, meter: Meter | None = None
) -> Starlette:
    """The gateway for ``settings.ollama_host`` (the upstream)."""
    opts = options or GatewayOptions()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["meter"] = meter or Meter.from_settings(settings, source="gateway")
        metrics.install(state["meter"])  # /metrics counts from the first call on
        state["pool"] = UpstreamPool(settings.ollama_host, timeout=settings.upstream_timeout)
        state["relay"] = Relay(state["meter"], state["pool"])
        retention = None
        if settings.keep_days is not None:
            retention = asyncio.create_task(prune_daily(state["meter"].ledger, settings.keep_days))
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
            await state["pool"].aclose()
            if state["meter"].budgets is not None:  # give back the budget leases not in use
                await in_thread(state["meter"].budgets.close)

    async def metered(request: Request) -> Response:
        path = request.url.path
        openai = path in OPENAI_ROUTES
        operation = OPENAI_ROUTES.get(path) or OLLAMA_ROUTES[path]
        meter: Meter = state["meter"]

        async def refuse(status: int, error_type: str, message: str, model: str = "") -> Response:
            # Every refusal is a span too, charged to the defaults when the caller is unknown.
            who = Attribution(tenant=settings.tenant, department=settings.department)
            await in_thread(
                lambda: meter.refuse(
                    operation=operation,
                    model=model,
                    attribution=who,
                    error_type=error_type,
                    message=message,
                    http_status=status,
                )
            )
            return error_response(openai, status, message)

        try:
            raw = await request.body()
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError) as exc:
            return await refuse(400, "bad_request", f"invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return await refuse(400, "bad_request", "the request body must be a JSON object")
        model = body.get("model")
        if not model or not isinstance(model, str):
            return await refuse(400, "bad_request", "model is required")
        try:

            def who() -> Caller:
                return resolve(
                    request,
                    meter.ledger,
                    settings,
                    require_key=opts.require_key,
                    default_user=opts.default_user,
                )

            # Only a presented key needs the ledger; headers and defaults are resolved in place.
            caller = await in_thread(who) if presented_key(request) else who()
        except Unauthorized as exc:
            return await refuse(401, "unauthorized", str(exc), model)
        except LedgerError as exc:
            message = f"the API key cannot be checked, so the call was not made: {exc}"
            return await refuse(503, "ledger_unavailable", message, model)
        except ValidationError as exc:
            return await refuse(400, "bad_request", str(exc), model)
        relay: Relay = state["relay"]
        return await relay.metered(
            path, body, request.headers, caller.attribution, request.url.query
        )

    async def passthrough(request: Request) -> Response:
        pool: UpstreamPool = state["pool"]
        try:
            response = await pool.request(
                request.method,
                request.url.path,
                body=await request.body(),
                query=request.url.query,
                headers=forward_headers(request.headers),
            )
        except UpstreamError as exc:
            return error_response(request.url.path.startswith("/v1"), gateway_status(exc), str(exc))

        async def body() -> AsyncIterator[bytes]:
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
        return StreamingResponse(body(), status_code=response.status, headers=headers)

    async def admin(request: Request) -> Response:
        if opts.allow_admin:
            return await passthrough(request)
        return error_response(
            False,
            403,
            f"{request.url.path} manages models and is refused by the gateway; "
            "start `ometer serve --allow-admin` to allow it",
        )

    async def healthz(request: Request) -> Response:
        meter: Meter = state["meter"]
        checks: dict[str, str] = {}
        try:
            await in_thread(meter.ledger.count)
            checks["ledger"] = "ok"
        except Exception as exc:
            checks["ledger"] = f"failed: {exc}"
        pool: UpstreamPool = state["pool"]
        try:
            reply = await pool.request("GET", "/api/version", timeout=3.0)
            finish(reply, completed=False)
            checks["upstream"] = "ok" if reply.status == 200 else f"HTTP {reply.status}"
        except UpstreamError as exc:
            checks["upstream"] = f"unreachable: {exc}"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", **checks},
            status_code=200 if healthy else 503,
        )

    routes = [
        *(Route(path, metered, methods=["POST"]) for path in (*OLLAMA_ROUTES, *OPENAI_ROUTES)),
        *(Route(path, passthrough, methods=["GET", "POST", "HEAD"]) for path in PASSTHROUGH),
        *(Route(path, admin, methods=["POST", "DELETE", "PUT"]) for path in ADMIN),
        Route("/healthz", healthz, methods=["GET"]),
        *dashboard_routes(lambda: state["meter"], settings, opts.admin_token),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
