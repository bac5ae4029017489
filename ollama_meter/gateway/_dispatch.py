"""The metered calls' way through the app: past Starlette's router and exception layers.

Starlette hands every request through its exception middleware, its router (which tries the
routes in turn), the route, and the route's wrapper, each with an exception layer of its own
(a frame each, a ``Request`` made twice, every message sent through two more wrappers). A
metered call (``POST`` to one of Ollama's or OpenAI's inference paths, the gateway's hot path)
is found by its path in one look-up instead, below the gateway's own middlewares (the origin
check, the drain, the host guard, the room for bodies), which it goes through as every request
does. What the router would have set in its scope is set, and an exception its endpoint raises
is handled by the app's handlers as Starlette's layers would (a caller that hung up is a 499).
Every other request goes the usual way.
"""

from __future__ import annotations

from typing import Any

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STARTED = "http.response.start"
_HANDLERS = "starlette.exception_handlers"


class GatewayApp(Starlette):
    """Starlette, its routes in ``direct`` (plain POST routes) found by path, not by its router."""

    def __init__(self, *args: Any, direct: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct = direct

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        above: Any = stack
        while not isinstance(above.app, ExceptionMiddleware):  # the last of the middlewares
            above = above.app
        routes = {
            route.path: route
            for route in self.routes
            if isinstance(route, Route)
            and route.path in self.direct
            and "{" not in route.path
            and route.methods == {"POST"}
        }
        above.app = Direct(above.app, routes)
        return stack


class Direct:
    """ASGI: a POST to one of ``routes``' paths straight to its endpoint, the rest to ``app``
    (Starlette's exception middleware, then its router)."""

    __slots__ = ("app", "handlers", "routes")

    def __init__(self, app: ExceptionMiddleware, routes: dict[str, Route]) -> None:
        self.app = app
        self.routes = routes
        self.handlers = (app._exception_handlers, app._status_handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(get_route_path(scope))
            if route is not None:
                await self._call(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _call(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """What the router, the route and the exception layers would do, in one frame."""
        scope[_HANDLERS] = self.handlers
        scope.setdefault("router", scope["app"].router)
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = dict(scope.get("path_params", {}))
        request = Request(scope, receive, send)
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == STARTED:
                started = True
            await send(message)

        try:
            response = await route.endpoint(request)
            await response(scope, receive, sender)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if started:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            answer = await handler(request, exc)
            if answer is not None:
                await answer(scope, receive, sender)
            exc.__traceback__ = None

    def _handler(self, exc: Exception) -> Any:
        """The app's handler of ``exc``: by its status, then by its class's nearest ancestor."""
        by_class, by_status = self.handlers
        if isinstance(exc, HTTPException) and exc.status_code in by_status:
            return by_status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in by_class:
                return by_class[cls]
        return None
