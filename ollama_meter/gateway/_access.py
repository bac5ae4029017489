"""Who may call which gateway route, and how much a request may carry.

The policy (README, "Security"):

- ``--require-key``: every Ollama route needs a live key (metered, pass-through
  and admin alike); the gateway's own pages need it too unless an admin token is set.
- ``--admin-token``: the dashboard, ``/api/dash`` and ``/metrics`` need that token;
  so do model-management routes, on top of ``--allow-admin`` (a key alone cannot
  delete a model).
- ``/healthz`` stays open for load balancers, and says only ok or not.
- ``ometer run``'s gateway (``own_pages=False``) is its program's: its own pages are refused
  to everyone, or any local user could read every tenant's spend while the program runs.

Refused unauthenticated requests are never spans (anyone could grow the ledger
with them): they are counted, and logged at most once per interval. A key that cannot be
checked (the ledger away, or its row broken in SQL) is a 503 that only its caller sees,
so the log says it too, a line every 10 s.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from ollama_meter._logging import Throttled
from ollama_meter._names import MAX_USER, name_problem
from ollama_meter.errors import KeyRefused, LedgerError, ValidationError
from ollama_meter.gateway._answers import error_response
from ollama_meter.gateway._attribution import HEADER_KEY
from ollama_meter.gateway._limits import MAX_BODY_BYTES
from ollama_meter.gateway._origins import allowed_origins
from ollama_meter.gateway._relay import wire_of
from ollama_meter.gateway._threads import in_thread
from ollama_meter.ledger import KEY_PREFIX, ApiKey

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger

log = logging.getLogger("ollama_meter.gateway")


TOKEN_IN_QUERY = frozenset({"/dashboard", "/api/dash"})
"""The pages a browser opens, which take the admin token as ``?token=`` too; not ``/metrics``:
in a scrape URL it would show in Prometheus' list of targets."""
TOKEN_TWICE = " (?token= is given twice, so no token is read from it: give it once)"


NOT_LIVE = (
    "this API key is not a live key (revoked, expired, or mistyped): send a live one "
    "(`ometer keys list`)"
)
"""A key of ours that is not live; without ``--require-key`` a call may send none instead."""
_NO_KEY = (
    "a valid API key is required: send `Authorization: Bearer <key>` or `X-Api-Key: <key>` "
    "(see `ometer keys create`)"
)
NO_PAGES = (
    "this gateway only meters the program `ometer run` started, and serves none of the "
    "gateway's own pages; see the figures with `ometer report`, or `ometer serve` for a dashboard"
)


class Refused(Exception):
    """A request turned away before any work, with the answer to send."""

    def __init__(self, response: Response) -> None:
        self.response = response


_RETRY_SOON = {"Retry-After": "5"}
"""What a 503 for a ledger that cannot be read says: try again in 5 s (the clients that retry
a 503 wait that long; without it the OpenAI and Anthropic ones tried again at once)."""


class BadCall(Exception):
    """A metered request refused before metering could start: answered, and written as a span."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        model: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.model = model
        self.headers = headers


async def unrouted(request: Request, exc: Exception) -> Response:
    """A path or method the gateway does not serve (never forwarded): 404 or 405, one line in
    the error shape of the path's clients, where Starlette would answer in plain text."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    method, path = request.method, request.url.path
    if status == 404 and (other := _other_slash(request)) is not None:
        return Response(status_code=307, headers={"Location": other})
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    if status == 405:
        takes = headers.get("Allow", "")
        message = f"{path} does not take {method} through the gateway; it takes {takes}"
    else:
        message = f"{method} {path} is not a route this gateway serves"
    return error_response(wire_of(path), status, message, headers=headers)


def _other_slash(request: Request) -> str | None:
    """Where a path the gateway serves with or without its trailing slash is, relative (path
    and query), as Ollama's router redirects; None when neither form is a route.

    Starlette's own redirect wrote an absolute URL from the caller's Host header: anyone
    could have the gateway's answers point at a host of their choosing.
    """
    path = request.scope["path"]
    other = _slashed(path)
    if not other or other.startswith("//"):  # a Location of //host is another host
        return None
    scope = {**request.scope, "path": other}
    if not any(route.matches(scope)[0] != Match.NONE for route in request.app.routes):
        return None
    # Percent-encoded again: a decoded %0A or %3F would say something else
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{quote(other)}?{query}" if query else quote(other)


def _slashed(path: str) -> str:
    """``path`` without its trailing slashes, or with one when it has none."""
    return path.rstrip("/") if path.endswith("/") else f"{path}/"


def route_of(request: Request) -> str:
    """The route a request matched, as registered (``/v1/models/{model:path}``).

    What refusals are counted by: the path itself is whatever the caller sent, and a
    label per path would let anyone without a key add a series to every scrape.
    """
    route = request.scope.get("route")  # set by newer Starlette routers
    if route is None:
        matched = (r for r in request.app.routes if r.matches(request.scope)[0] == Match.FULL)
        route = next(matched, None)
    return getattr(route, "path", None) or request.url.path


_KEY_HEADERS = (HEADER_KEY, "x-api-key")
"""Where a key comes as the whole value; ``Authorization`` brings one as its bearer."""


_KEY_NAMES = frozenset(name.encode() for name in (*_KEY_HEADERS, "authorization"))
_name = itemgetter(0)


def _carries_key(request: Request) -> bool:
    """Whether the request has a header a key may come in (most calls have none): one pass
    over its headers (their names taken in C: no step of Python a header), not one a use."""
    return not _KEY_NAMES.isdisjoint(map(_name, request.headers.raw))


def _only(request: Request, header: str) -> str | None:
    """The header's one value; None when absent or sent twice (a proxy in front of the
    gateway may have checked the other one, so neither is taken)."""
    values = request.headers.getlist(header)
    return values[0] if len(values) == 1 else None


def _bearer_of(auth: str) -> str | None:
    return (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None


def _credentials_of(auth: str) -> str | None:
    """The key an ``Authorization`` value carries: its bearer, or a gateway key (``om_...``)
    after any scheme or none (``Authorization: om_...`` was read as no key at all, and its
    call charged to the defaults unseen)."""
    words = auth.split()
    if words and words[-1].startswith(KEY_PREFIX) and len(words) <= 2:
        return words[-1]
    return _bearer_of(auth)


def bearer(request: Request) -> str | None:
    return _bearer_of(_only(request, "authorization") or "")


def offered_keys(request: Request) -> list[str]:
    """Every gateway key (``om_...``) the request carries where a key is read, in a header
    given once or twice: a call that carries one and is charged to no live key is refused,
    never charged to the headers or the defaults unseen."""
    sent = [value.strip() for name in _KEY_HEADERS for value in request.headers.getlist(name)]
    sent += [
        token
        for auth in request.headers.getlist("authorization")
        if (token := _credentials_of(auth))
    ]
    return [key for key in sent if key.startswith(KEY_PREFIX)]


def presented_key(request: Request) -> str | None:
    """The API key a caller sent: the first of ``X-Ometer-Key``, ``X-Api-Key`` and
    ``Authorization: Bearer`` that holds one of the gateway's keys, else the first there;
    a header given twice is none.

    ``X-Ometer-Key`` first: the OpenAI client sends its ``api_key`` as a bearer whatever
    it is ("ollama" often), and the key then travels in ``default_headers``. Anthropic's
    clients send their ``api_key`` as ``X-Api-Key`` and an auth token as a bearer, both
    when given both (Anthropic's own key in one, the gateway's in the other).
    """
    sent: list[str] = []
    for header in _KEY_HEADERS:
        given = request.headers.getlist(header)
        if len(given) > 1:  # a blank one too: a header sent twice, whatever its values
            return None
        sent += [key for value in given if (key := value.strip())]
    sent += [token] if (token := _credentials_of(_only(request, "authorization") or "")) else []
    return next((key for key in sent if key.startswith(KEY_PREFIX)), sent[0] if sent else None)


def admin_token_of(configured: str) -> str:
    """The admin token as a caller can present it, or ``ValidationError``.

    No HTTP header carries a value's surrounding blanks, so a token read from a secret file
    with its line break is the token without it; one that is blank, or has a character
    other than printable ASCII (which clients put in a header each their own way), could
    never be presented, and would lock the gateway's pages with no word why.
    """
    token = configured.strip()
    if not token:
        problem = "is blank"
    elif not (token.isascii() and token.isprintable()):
        problem = "has a character that is not printable ASCII"
    else:
        return token
    raise ValidationError(
        f"--admin-token (OMETER_ADMIN_TOKEN): {problem}; give letters, digits and "
        "punctuation (e.g. the output of `openssl rand -hex 32`)"
    )


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """How one gateway answers: who may call it (the policy above), and how much they may send."""

    require_key: bool = False
    allow_admin: bool = False
    admin_token: str | None = None
    default_user: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    loopback: bool = False  # listening only there: requests must name this machine (_hosts.py)
    origins: tuple[str, ...] = ()  # web pages allowed beyond Ollama's defaults (_origins.py)
    own_pages: bool = True  # the dashboard, /api/dash, /metrics and model management served

    def __post_init__(self) -> None:
        if self.default_user is not None and (
            problem := name_problem(self.default_user, limit=MAX_USER)
        ):
            raise ValidationError(f"user name {problem}")
        if self.admin_token is not None:
            object.__setattr__(self, "admin_token", admin_token_of(self.admin_token))
        allowed_origins(self.origins)  # a malformed one is an error before anything listens

    @property
    def guarded(self) -> bool:
        """Whether anything is asked of callers at all."""
        return self.require_key or bool(self.admin_token)


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented admin token."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class Access:
    """Who a request comes from, by the policy above: its live key, or the admin token."""

    def __init__(self, options: GatewayOptions, ledger: Ledger) -> None:
        self.options = options
        self.ledger = ledger
        self.unauthenticated = Unauthenticated()
        self._unchecked = Throttled(log)

    def _refused(self, request: Request, message: str) -> Refused:
        path, client = request.url.path, request.client
        self.unauthenticated.refused(route_of(request), client.host if client else "?")
        return Refused(
            error_response(wire_of(path), 401, message, headers={"WWW-Authenticate": "Bearer"})
        )

    async def _key_of(self, request: Request) -> ApiKey | None:
        """The live key the caller presented (None: none presented, or not a live key)."""
        secret = presented_key(request)
        if secret is None or not secret.startswith(KEY_PREFIX):
            return None  # not one of ours (an OpenAI client sends its api_key): no ledger read
        found: ApiKey | None = await in_thread(self.ledger.find_key, secret)
        return found

    def _cannot_check(self, exc: LedgerError) -> str:
        self._unchecked.failed("checking an API key", exc)
        return f"the API key cannot be checked, so the call was not made: {exc}"

    async def required_key(self, request: Request) -> ApiKey:
        """The caller's live key, or :class:`Refused` (401; 503 when keys cannot be checked)."""
        try:
            key = await self._key_of(request)
        except LedgerError as exc:
            message = self._cannot_check(exc)
            wire = wire_of(request.url.path)
            raise Refused(error_response(wire, 503, message, headers=_RETRY_SOON)) from None
        if key is None:
            # A key of ours that is not live (revoked, mistyped) is said to be that.
            none = _NO_KEY if not offered_keys(request) else _not_live(required=True)
            raise self._refused(request, _twice(request) or none)
        return key

    async def optional_key(self, request: Request) -> ApiKey | None:
        """A presented key when keys are not required; its owner is charged when headers are not.

        One of our keys that is not live is :class:`Refused` (401) all the same: its caller
        asked to be charged to it, and a revoked key must not go on working on the defaults.
        """
        if not _carries_key(request):
            return None
        try:
            key = await self._key_of(request)
        except LedgerError as exc:
            message = self._cannot_check(exc)
            raise BadCall(503, "ledger_unavailable", message, headers=_RETRY_SOON) from None
        if key is None and offered_keys(request):
            raise self._refused(request, _twice(request) or _not_live(required=False))
        return key

    async def still_live(self, request: Request, key: ApiKey) -> None:
        """:class:`KeyRefused` unless ``key``, read at the door, is still live: read again as
        its call leaves the queue, so a call that waited is not sent on a key revoked
        meanwhile. Not counted as an unauthenticated refusal: the call is a span already."""
        try:
            found = await self._key_of(request)
        except LedgerError as exc:
            message = self._cannot_check(exc)
            raise KeyRefused(message, error_type="ledger_unavailable", http_status=503) from None
        if found is None or found.id != key.id:
            message = _not_live(required=self.options.require_key)
            raise KeyRefused(message, error_type="key_revoked", http_status=401)

    async def admin_only(self, request: Request, *, in_query: bool = False) -> ApiKey | None:
        """The admin token when one is set; else a key when keys are required: that key, which
        the gateway's own pages show only its own tenant and department.

        ``in_query``: the dashboard and ``/api/dash`` also take ``?token=`` (links in a browser);
        a route forwarded to Ollama never does, or the token would travel on in the URL.
        """
        if not self.options.own_pages:
            raise Refused(error_response(wire_of(request.url.path), 403, NO_PAGES))
        token = self.options.admin_token
        if token:
            in_url = request.query_params.getlist("token") if in_query else []
            given = bearer(request) or (in_url[0] if len(in_url) == 1 else None)
            if not token_matches(given, token):
                how = "Authorization: Bearer <token>" + (" or ?token=" if in_query else "")
                how += TOKEN_TWICE if len(in_url) > 1 else ""
                raise self._refused(request, f"this needs the admin token: {how}")
        elif self.options.require_key:
            return await self.required_key(request)
        return None


def _not_live(*, required: bool) -> str:
    return NOT_LIVE if required else f"{NOT_LIVE}, or none to be charged to the defaults"


def _twice(request: Request) -> str | None:
    """Why no key was read from a request that carries one only in headers given twice."""
    if presented_key(request) in (offered := offered_keys(request)) or not offered:
        return None
    doubled = [
        name.title()
        for name in (*_KEY_HEADERS, "authorization")
        if len(request.headers.getlist(name)) > 1
    ]
    which = f"{doubled[0]} is" if len(doubled) == 1 else f"{', '.join(doubled)} are each"
    return (
        f"{which} given twice, so no key is read from it (a proxy on the way may have read "
        "the other one): give the key once"
    )


class Unauthenticated:
    """Counts refused unauthenticated requests; logs them at most once per ``interval``."""

    def __init__(
        self, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._throttle = Throttled(log, interval=interval, clock=clock)
        self._lock = threading.Lock()
        self.by_route: dict[str, int] = {}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_route.values())

    def refused(self, route: str, client: str) -> None:
        with self._lock:
            self.by_route[route] = self.by_route.get(route, 0) + 1
        if (count := self._throttle.due("refused")) is None:
            return
        log.warning(
            "refused %d unauthenticated request(s) in the last %.0f s (latest: %s from %s)",
            count,
            self.interval,
            route,
            client,
        )

    def prometheus(self) -> str:
        """This process's count, as Prometheus text."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            counts = dict(self.by_route)

        class _Refused:
            def collect(self) -> list[CounterMetricFamily]:
                family = CounterMetricFamily(
                    "ometer_gateway_unauthenticated_requests",
                    "Requests this gateway process refused for want of a key or the admin token.",
                    labels=["route"],
                )
                for route, count in sorted(counts.items()):
                    family.add_metric([route], count)
                return [family]

        registry = CollectorRegistry()
        registry.register(_Refused())
        return generate_latest(registry).decode()
