"""Which web pages may call the gateway from a browser: Ollama's origin rule, kept in front.

A browser sends the page's ``Origin`` with every cross-origin call, and Ollama answers only
pages it allows (``OLLAMA_ORIGINS`` plus http(s) on localhost, 127.0.0.1 and 0.0.0.0 at any
port, and the ``app``, ``file``, ``tauri``, ``vscode-webview`` and ``vscode-file`` schemes):
any other origin gets 403, so a page on some web site cannot spend a department's budget
through a gateway on its visitor's machine with a plain form post (no preflight needed).
The gateway is the server the browser talks to, so it applies the same rule, with
``OMETER_ORIGINS`` for the pages it allows beyond the defaults (same form: comma-separated,
one ``*`` per entry at most, ``*`` alone for any page):

- no ``Origin``: nothing changes (the dashboard sends none: it only opens links and GET
  forms). A page is never taken for the gateway's own by naming the gateway's address, as
  CORS libraries take it (Ollama's too): a page whose name was pointed at the gateway (DNS
  rebinding; a ``.local`` name anyone on the LAN may answer for) names exactly that;
- an allowed origin: a preflight (``OPTIONS``) is answered 204 with what may be sent, and
  every answer says the page may read it (and the span id and ``Retry-After`` headers);
- any other origin: 403 before anything is read, forwarded or metered (no span: anyone's
  page could grow the ledger with them), in the route's error format.

The gateway's own pages (:data:`OWN_PAGES`: the dashboard, its JSON, ``/metrics``) are no
route of Ollama's that a browser app calls, and hold everyone's spend: an allowed page's
request to them is passed on as before, with no CORS header, so no page but the dashboard
itself reads them (a preflight is not answered either).

The caller's ``Origin`` is never passed on to Ollama (``_forwarded.HOP_BY_HOP``): the gateway
made the decision, and Ollama's own check would read an origin of a page it never served.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_meter.errors import ValidationError
from ollama_meter.gateway._answers import error_response
from ollama_meter.gateway._relay import wire_of
from ollama_meter.upstream._recorded import TAGS_PARTS, tags_part

DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    *(f"{scheme}://*" for scheme in ("app", "file", "tauri", "vscode-webview", "vscode-file")),
)
"""Ollama's own defaults (``envconfig.AllowedOrigins``)."""

ALLOWED_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
ALLOWED_HEADERS = ", ".join((
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    # OpenAI's and Anthropic's browser clients
    "OpenAI-Beta", "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
    "x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
    "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
    "x-api-key",
    # the gateway's own, as it reads them: the tags' parts too (X-Ometer-Tags-2...), else a
    # browser refused to send a page's call with long tags. Not X-Ometer-Client-Span: only an
    # ometer client or gateway writing to a ledger has a span to name, and neither is a page
    "X-Ometer-Key", "X-Ometer-Tenant", "X-Ometer-Department", "X-Ometer-User",
    *(tags_part(number) for number in range(1, TAGS_PARTS + 1)),
    # a page instrumented with OpenTelemetry: its trace goes on through the gateway
    "traceparent", "tracestate",
)).encode()  # fmt: skip
EXPOSED_HEADERS = (
    b"X-Ometer-Span-Id, X-Ometer-Ledger, X-Ometer-Refused, Retry-After, x-should-retry"
)
MAX_AGE = b"43200"  # 12 h, as Ollama's
OWN_PAGES = frozenset({"/dashboard", "/api/dash", "/metrics"})
"""The gateway's pages, not Ollama's: no other page reads them, allowed or not."""


@dataclass(frozen=True, slots=True)
class Origins:
    """The pages allowed: exact origins, and ``prefix*suffix`` patterns."""

    exact: frozenset[str]
    patterns: tuple[tuple[str, str], ...]
    any: bool = False

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        return (
            self.any
            or origin in self.exact
            or any(
                len(origin) >= len(head) + len(tail)
                and origin.startswith(head)
                and origin.endswith(tail)
                for head, tail in self.patterns
            )
        )


def allowed_origins(extra: Iterable[str] = ()) -> Origins:
    """Ollama's defaults and ``extra`` (``OMETER_ORIGINS``); a malformed entry is an error."""
    exact: set[str] = set()
    patterns: list[tuple[str, str]] = []
    anything = False
    for entry in (*extra, *DEFAULT_ORIGINS):
        origin = entry.strip().lower()
        if not origin:
            continue
        if (page := _page_address(origin)) is not None:  # what a browser's Origin never is
            raise ValidationError(_bad(entry, f"is a page's address, not its origin: give {page}"))
        if origin == "*":
            anything = True
        elif origin.count("*") > 1 or not (origin.isascii() and origin.isprintable()):
            raise ValidationError(_bad(entry, "has more than one * or a character not allowed"))
        elif origin != "null" and "://" not in origin:
            raise ValidationError(_bad(entry, "is not scheme://host[:port]"))
        elif origin != "null" and (why := _not_origin(origin)):
            raise ValidationError(_bad(entry, f"is not an origin ({why})"))
        elif "*" in origin:
            head, _, tail = _as_browsers_write(origin).partition("*")
            patterns.append((head, tail))
        else:
            exact.add(_as_browsers_write(origin))
    return Origins(frozenset(exact), tuple(dict.fromkeys(patterns)), anything)


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def _not_origin(origin: str) -> str | None:
    """What keeps ``origin`` (lower case, no path) from being ``scheme://host[:port]`` as a
    browser sends it, else None; a ``*`` stands for any part of one. Such an entry matched
    no page (``http://[::1`` with no closing bracket, a port of 99999), and the page it was
    meant for got 403 with no word why."""
    scheme, _, rest = origin.partition("://")
    rest = rest.rstrip("/")
    if not _SCHEME.fullmatch(scheme.replace("*", "x")):
        return f"{scheme!r} is no scheme"
    if rest.startswith("["):
        host, close, after = rest[1:].partition("]")
        if not close:
            return "its IPv6 address has no closing ]"
        if "*" not in host and not _ipv6(host):
            return f"{host!r} is no IPv6 address"
        if after and not after.startswith(":"):
            return f"{rest!r} is no host name"
        colon, port = after[:1], after[1:]
    elif rest.count(":") > 1:
        return f"an IPv6 address goes in brackets: [{rest}]"
    else:
        host, colon, port = rest.partition(":")
        if host and not _HOST.fullmatch(host.replace("*", "x")):
            return f"{host!r} is no host name"
    if not host:
        return "it names no host"
    if colon and not port:
        return "it ends in : with no port"
    if port and "*" not in port and not (port.isdigit() and int(port) <= 65535):
        return f"port {port if port.isdigit() else repr(port)} is not 0 to 65535"
    return None


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _as_browsers_write(origin: str) -> str:
    """``origin`` (checked by :func:`_not_origin`, or ``null``) as a browser's ``Origin`` writes
    it: without its scheme's own port (``:443``), a port with no leading zeros, an IPv6
    address in its short form. Written another way, it matched no page a browser sends."""
    scheme, sep, rest = origin.partition("://")
    if not sep:
        return origin
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        host, port = (
            f"[{host if '*' in host else ipaddress.IPv6Address(host).compressed}]",
            after[1:],
        )
    else:
        host, _, port = rest.partition(":")
    if port and "*" not in port:
        port = "" if _DEFAULT_PORTS.get(scheme) == str(int(port)) else str(int(port))
    return f"{scheme}://{host}{':' if port else ''}{port}"


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _page_address(origin: str) -> str | None:
    """The origin of ``origin`` when it has a path, query or fragment (a page's address
    copied whole: https://chat.example.com/app), else None. A browser's ``Origin`` is
    scheme://host[:port] and nothing after, so such an entry matched no page, and the page
    it was meant for was refused with no word why."""
    scheme, sep, rest = origin.partition("://")
    rest = rest.rstrip("/")
    cut = min((rest.index(c) for c in "/?#" if c in rest), default=-1)
    return f"{scheme}://{rest[:cut]}" if sep and cut >= 0 else None


def _bad(entry: str, problem: str) -> str:
    return (
        f"--origins (OMETER_ORIGINS): {entry.strip()[:80]!r} {problem}; give web page origins "
        "separated by commas, as OLLAMA_ORIGINS takes them (e.g. "
        "https://chat.example.com,http://intranet:*), or * for any page"
    )


class OriginCheck:
    """ASGI middleware: the rule above, before any route."""

    def __init__(self, app: ASGIApp, *, origins: Origins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
        if not given:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        if len(given) > 1:
            message = f"Origin is given {len(given)} times; give it once"
            await error_response(wire_of(path), 400, message)(scope, receive, send)
            return
        origin = given[0]
        if not self.origins.allows(origin):
            shown = origin[:200] if origin.isprintable() else repr(origin[:200])
            message = (
                f"a web page from {shown} may not call this gateway (as Ollama refuses pages it "
                "does not allow); its administrator can allow it with --origins / "
                "OMETER_ORIGINS, as OLLAMA_ORIGINS allows pages on Ollama"
            )
            await error_response(wire_of(path), 403, message)(scope, receive, send)
            return
        if path in OWN_PAGES:  # as before: sent, but not for the page to read
            await self.app(scope, receive, send)
            return
        allow = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS":
            await _preflight(allow, send)
            return

        started = False

        async def send_allowed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                exposed = (b"access-control-expose-headers", EXPOSED_HEADERS)
                message = {**message, "headers": [*message.get("headers", []), *allow, exposed]}
            await send(message)

        try:
            await self.app(scope, receive, send_allowed)
        except Exception:
            # Starlette answers a route's unexpected exception with its 500 outside every
            # middleware, which the page could not read (a network error to it, not a 500):
            # the same 500 is sent here, readable; the exception goes on to be logged.
            if not started:
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send_allowed)
            raise


async def _preflight(allow: list[tuple[bytes, bytes]], send: Send) -> None:
    headers = [
        *allow,
        (b"access-control-allow-methods", ALLOWED_METHODS),
        (b"access-control-allow-headers", ALLOWED_HEADERS),
        (b"access-control-max-age", MAX_AGE),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def origin_check(origins: Origins) -> Middleware:
    """The middleware as the app declares it."""
    return Middleware(OriginCheck, origins=origins)
