"""What every request is checked for before routing: its path, its URL, and (DNS rebinding)
its Host.

A path with a ``.`` or ``..`` segment is refused: the gateway forwards paths to Ollama, and
the HTTP client that does resolves dot segments, so a pass-through route that takes the rest
of the path (``/v1/models/{model}``) would otherwise reach any route, model management too.

A gateway listening on loopback answers only requests named for this machine. A web page whose name its owner points at 127.0.0.1 is same-origin with the gateway, and the
browser sends it every request the page makes: the dashboard read, a model pulled with
``--allow-admin``. Ollama refuses such requests when it listens on loopback by the ``Host``
they name, and so must the gateway in front of it: it sends Ollama a ``Host`` of its own, so
Ollama never sees the caller's. The rule is Ollama's (``allowedHostsMiddleware``): an IP
address that is loopback, private or unspecified, ``localhost``, this machine's host name, or
a name under ``.localhost``, ``.local`` or ``.internal``. A gateway listening on any other
address was started for the network (``--require-key``, ``--admin-token``,
``--insecure-open``), and takes every name. A request that names two (``Host`` given twice)
is a 400 on any gateway (RFC 9112 §3.2): the check could read one and a server the other.

A URL holding a gateway key (``om_...``) or the admin token is a 400 on every route but the
gateway's own pages (which take ``?token=`` and send nothing on): the gateway reads neither
there, and would pass the URL on to Ollama, into its log.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import socket
from urllib.parse import parse_qsl, unquote_plus

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ollama_meter._names import holds_key
from ollama_meter.gateway._answers import error_response
from ollama_meter.gateway._origins import OWN_PAGES
from ollama_meter.gateway._relay import wire_of

IN_URL = (
    "the URL holds a gateway key or the admin token, which would travel on to Ollama and into "
    "its log: send it in a header (Authorization: Bearer <key>, or X-Ometer-Key), never in "
    "the URL (only the dashboard takes ?token=)"
)

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%~_-]*\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
"""A ``Host`` as RFC 9110 has it (RFC 3986's host and port): a name or an address, never a
path, query, fragment or user. Starlette's ``request.url`` is built from it, and older ones
took ``gw/api/dash?`` as a host followed by a path, whatever path was asked."""


_LONGEST_ADDRESS = 64
"""Characters of the longest address a ``Host`` names: an IPv6 one of 45 and a zone of 16."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # A Host may be 64 KiB, a new one each request: one that long is no address, and not
    # kept (the cache kept 1,024 of them whole, 64 MB).
    return _address(text) if len(text) <= _LONGEST_ADDRESS else None


@functools.lru_cache(maxsize=1024)  # the same few Host headers, every request
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _name_of(host: str) -> str:
    """The host a ``Host`` header names, without its port or IPv6 brackets."""
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        port_ok = rest == "" or (rest.startswith(":") and rest[1:].isdigit())
        return inside if bracket and port_ok else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and _ip(host) is None else host


def is_local_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine (empty: an HTTP/1.0 client named none)."""
    if not host.strip():
        return True
    name = _name_of(host.strip()).lower().rstrip(".")
    if name == "localhost":
        return True
    ip = _ip(name)
    if (ip is not None and (ip.is_loopback or ip.is_private or ip.is_unspecified)) or (
        ip is None and name.endswith(_LOCAL_SUFFIXES)
    ):
        return True
    # Last: the machine's name is a system call (uname) each time, and may change.
    return bool(name) and name == socket.gethostname().lower()


def is_plain_path(path: str) -> bool:
    """Whether a (decoded) path has no ``.`` or ``..`` segment and no control character: the
    HTTP client forwarding a request resolves dot segments, so ``/v1/models/../../api/pull``
    would reach Ollama as /api/pull; and a route matches ``/api/tags`` + newline too."""
    dotted = "." in path and any(part in (".", "..") for part in path.split("/"))
    return not dotted and path.isprintable()


_WORDS = re.compile(r"[\s\"':,;()\[\]{}<>]+")
"""What stands around a token in a query's name or value: blanks (``Bearer TOKEN``), quotes
(``"TOKEN"``, as JSON writes it), a colon (``Bearer:TOKEN``), brackets."""


def holds_credential(query: bytes, token: str | None) -> bool:
    """Whether a query string holds a gateway key anywhere, or ``token`` (the admin token) as
    a name or value, or a word of one; each compared in constant time."""
    if not query:
        return False
    text = query.decode("latin-1")
    if holds_key(text) or holds_key(unquote_plus(text)):
        return True
    if not token:
        return False
    given = token.encode()
    for pair in parse_qsl(text, keep_blank_values=True):
        for part in pair:
            for word in (part, *_WORDS.split(part)):  # whole too: a token may hold a quote
                if hmac.compare_digest(word.encode("utf-8", "replace"), given):
                    return True
    return False


class Guard:
    """ASGI middleware before any route: a path with a dot segment is no route the gateway
    serves (404); with ``loopback`` (``ometer serve`` on a loopback ``--host``, ``ometer run``),
    a ``Host`` naming another machine gets 403; a URL holding a key or ``token`` (the admin
    token) is a 400 but on the gateway's own pages."""

    def __init__(self, app: ASGIApp, *, loopback: bool, token: str | None = None) -> None:
        self.app = app
        self.loopback = loopback
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "/")
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            host = hosts[0] if hosts else ""
            refusal = None
            if len(hosts) > 1:  # which one a check reads, and which one a server behind it
                message = f"Host is given {len(hosts)} times; give it once"
                refusal = error_response(wire_of(path), 400, message)
            elif not _HOST.fullmatch(host):  # RFC 9112 §3.2: a Host not a host is a 400
                message = f"{host!r} is not a host: Host names a host and a port, nothing more"
                refusal = error_response(wire_of(path), 400, message)
            elif self.loopback and not is_local_host(host):
                message = (
                    f"{host!r} is not a name of this machine, and this gateway listens only on "
                    "loopback; call it as localhost or 127.0.0.1 (a gateway started for the "
                    "network, with --host, takes any name)"
                )
                refusal = error_response(wire_of(path), 403, message)
            elif not is_plain_path(path):
                shown = path if path.isprintable() else repr(path)  # one line
                message = f"{scope['method']} {shown} is not a route this gateway serves"
                refusal = error_response(wire_of(path), 404, message)
            elif path not in OWN_PAGES and holds_credential(scope["query_string"], self.token):
                refusal = error_response(wire_of(path), 400, IN_URL)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def guard(*, loopback: bool, token: str | None = None) -> Middleware:
    """The middleware as the app declares it."""
    return Middleware(Guard, loopback=loopback, token=token)
