"""The ``ollama`` clients the SDK transport calls Ollama through, made with the caller's httpx
arguments (``MeteredClient(host, headers=..., timeout=..., verify=...)``).

What ``ollama.Client`` hands to httpx goes to httpx here too, with three of ours around it:
the transport (:mod:`._sdk_kept`), which takes the connection's settings (``verify``,
``cert``, ``proxy``, ``limits``, ``http2``... a proxy given to the client would bypass it),
the event hooks (:mod:`._sdk_heard`), and ``follow_redirects`` off unless asked (a redirect
is no answer, as the gateway has it). ``timeout`` as given replaces the configured one.
"""

from __future__ import annotations

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
    connection = {"verify": client_tls(), **{k: v for k, v in http.items() if k in TRANSPORT}}
    made: dict[str, Any] = {
        "timeout": httpx.Timeout(timeout, connect=10.0),
        "follow_redirects": False,
        **{k: v for k, v in http.items() if k not in TRANSPORT or k == "trust_env"},
        "verify": connection["verify"],
    }
    if aio:
        made["event_hooks"] = {"request": [aon_request], "response": [aon_response]}
        made["transport"] = AsyncKeptTransport(**connection)
    else:
        made["event_hooks"] = {"request": [on_request], "response": [on_response]}
        made["transport"] = KeptTransport(**connection)
    return made
