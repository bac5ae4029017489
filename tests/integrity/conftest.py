"""The integrity tests use the gateway fixtures too."""

from tests.gateway.conftest import gateway, serve, serve_on

__all__ = ["gateway", "serve", "serve_on"]
