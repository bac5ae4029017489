"""The ``ollama`` clients the SDK transport calls Ollama through, made with the caller's httpx
arguments (``MeteredClient(host, headers=..., timeout=..., verify=...)``).

What ``ollama.Client`` hands to httpx goes to httpx here too, with three of ours around it:
the transport (:mod:`._sdk_kept`), which takes the connection's settings (``verify``,
``cert``, ``proxy``, ``limits``, ``http2``... a proxy given to the client would bypass it),
the event hooks (:mod:`._sdk_heard`), and ``follow_redirects`` off unless asked (a redirect
is no answer, as the gateway has it). ``timeout`` as given replaces the configured one.

A proxy in the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
httpx reads for no client given a transport: each is mounted here as httpx would mount it,
on a transport of ours made with that proxy, so the calls httpx would send through it go
that way, kept-alive resends and the body's "sent whole" heard as on any other; but this
machine's loopback (:data:`LOOPBACK`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import urllib.request
from collections.abc import Mapping
from typing import Any

import httpx

from ollama_meter.upstream._sdk_heard import aon_request, aon_response, on_request, on_response
from ollama_meter.upstream._sdk_kept import AsyncKeptTransport, KeptTransport
from ollama_meter.upstream._tls import client_tls

TRANSPORT = frozenset({"verify", "cert", "trust_env", "http1", "http2", "limits", "proxy"})
"""The httpx arguments its transport takes (``trust_env`` the client too: its proxies, netrc)."""


def client_arguments(timeout: float, http: Mapping[str, Any], *, aio: bool) -> dict[str, Any]:
    """The arguments of an ``ollama`` client (but its host) for ``http`` (the caller's httpx
    arguments), ``timeout`` the configured one when ``http`` has none."""
    made: dict[str, Any] = {
        "timeout": httpx.Timeout(timeout, connect=10.0),
        "follow_redirects": False,
        **connected(http, aio=aio),
    }
    if aio:
        made["event_hooks"] = {"request": [aon_request], "response": [aon_response]}
    else:
        made["event_hooks"] = {"request": [on_request], "response": [on_response]}
    return made


def connected(http: Mapping[str, Any], *, aio: bool) -> dict[str, Any]:
    """``http`` (the caller's httpx arguments) with the connection's settings on our transport
    (and those of the environment's proxies): the arguments of the ``ollama`` clients of the
    calls that run no model (``_managing.py``; the client's own defaults, no time limit and
    redirects followed, unless ``http`` says otherwise), and of the metered calls' above."""
    connection = {"verify": client_tls(), **{k: v for k, v in http.items() if k in TRANSPORT}}
    made: dict[str, Any] = {
        **{k: v for k, v in http.items() if k not in TRANSPORT or k == "trust_env"},
        "verify": connection["verify"],
    }
    kept = AsyncKeptTransport if aio else KeptTransport
    made["transport"] = kept(**connection)
    if http.get("proxy") is None and http.get("trust_env", True):  # as httpx: a proxy given wins
        mounts = environment_proxies()
        made["mounts"] = {
            pattern: None if proxy is None else kept(**{**connection, "proxy": proxy})
            for pattern, proxy in ({**mounts, **dict.fromkeys(LOOPBACK)} if mounts else {}).items()
        }
    return made


LOOPBACK = ("all://localhost", "all://127.0.0.1", "all://[::1]")
"""Never called through a proxy in the environment, which would reach its own loopback, not
this machine's: an Ollama on 127.0.0.1 (the default) is called straight, as Ollama's own CLI
(Go's ``ProxyFromEnvironment``) calls it, where httpx and the ``ollama`` client send it to the
proxy unless ``NO_PROXY`` names it."""


def on_this_machine(url: str) -> bool:
    """Whether ``url`` names this machine's loopback (:data:`LOOPBACK`): called straight."""
    try:
        host = httpx.URL(url).host
    except Exception:  # httpx says what is wrong with it as it is called
        return False
    return f"all://[{host}]" in LOOPBACK if ":" in host else f"all://{host}" in LOOPBACK


def environment_proxies() -> dict[str, str | None]:
    """The proxies in the environment as httpx reads them (``get_environment_proxies``): a
    URL pattern (``http://``, ``all://*.corp``) and its proxy, None for one ``NO_PROXY`` sends
    straight (the default transport); empty when ``NO_PROXY`` is ``*``."""
    found = urllib.request.getproxies()
    mounts: dict[str, str | None] = {
        f"{scheme}://": url if "://" in url else f"http://{url}"
        for scheme in ("http", "https", "all")
        if (url := found.get(scheme))
    }
    for host in (name.strip() for name in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if host:
            mounts[_excluded(host)] = None
    return mounts


_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
"""The proxies httpx has a transport for (``socks5`` and ``socks5h`` with socksio installed)."""


def proxy_problem() -> str | None:
    """What makes a proxy in the environment one httpx cannot use, naming its variable (never
    its URL: it may hold a password), or None. The ``ollama`` client makes a client as it is
    imported, which reads them: ``ometer chat`` said "unexpected ImportError ... a bug"."""
    for pattern, url in environment_proxies().items():
        if url is None:
            continue
        kind = url.split("://", 1)[0].lower()
        name = f"{pattern.removesuffix('://').upper()}_PROXY"
        if kind not in _PROXY_SCHEMES:
            shown = f" ({kind}://)" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", kind) else ""
            return (
                f"{name} is not a proxy httpx can use{shown}: give an http://, https:// or "
                "socks5:// URL, or unset it (NO_PROXY names hosts called straight)"
            )
        if kind.startswith("socks") and importlib.util.find_spec("socksio") is None:
            return (
                f"{name} is a SOCKS proxy, which needs the socksio package: "
                "pip install 'httpx[socks]', or unset it"
            )
    return None


def _excluded(host: str) -> str:
    """The pattern httpx mounts for one host of ``NO_PROXY`` (curl's reading of it)."""
    if "://" in host:
        return host
    try:
        address = ipaddress.ip_address(host.split("/", maxsplit=1)[0])  # 10.0.0.0/8 too
    except ValueError:
        return f"all://{host}" if host.lower() == "localhost" else f"all://*{host}"
    return f"all://{host}" if address.version == 4 else f"all://[{host}]"
