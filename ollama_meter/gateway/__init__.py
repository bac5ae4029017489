"""The metering gateway (``ometer serve``): an Ollama-compatible ASGI app. Only place importing starlette.

Imported lazily (PEP 562): the CLI reads the limits without loading the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names
from ollama_meter.gateway._limits import MAX_BODY_BYTES, MAX_HEADER_BYTES

if TYPE_CHECKING:
    from ollama_meter.gateway._access import GatewayOptions
    from ollama_meter.gateway._app import ADMIN, create_app
    from ollama_meter.gateway._connections import (
        check_listen_host,
        is_loopback,
        listening_socket,
        listening_url,
        trusted_proxies,
    )
    from ollama_meter.gateway._drain import CLEAN_STOPS, GatewayServer
    from ollama_meter.gateway._passthrough import PASSTHROUGH
    from ollama_meter.gateway._server import server_config

__all__ = [
    "ADMIN",
    "CLEAN_STOPS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "PASSTHROUGH",
    "GatewayOptions",
    "GatewayServer",
    "check_listen_host",
    "create_app",
    "is_loopback",
    "listening_socket",
    "listening_url",
    "server_config",
    "trusted_proxies",
]

_LAZY = {
    "ADMIN": "._app",
    "CLEAN_STOPS": "._drain",
    "PASSTHROUGH": "._passthrough",
    "GatewayOptions": "._access",
    "GatewayServer": "._drain",
    "create_app": "._app",
    "check_listen_host": "._connections",
    "is_loopback": "._connections",
    "listening_socket": "._connections",
    "listening_url": "._connections",
    "server_config": "._server",
    "trusted_proxies": "._connections",
}


__getattr__ = lazy_names(globals(), _LAZY)
