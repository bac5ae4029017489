"""The metering gateway (``ometer serve``): an Ollama-compatible ASGI app. Only place importing starlette."""

from ollama_meter.gateway._app import ADMIN, PASSTHROUGH, GatewayOptions, create_app

__all__ = ["ADMIN", "PASSTHROUGH", "GatewayOptions", "create_app"]
