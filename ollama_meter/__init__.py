"""ollama-meter: who uses your Ollama models, what each call costs, where the time goes.

The public Python surface. Everything else is reached through the ``ometer``
command or the subpackages (``ollama_meter.testing`` for the Ollama emulator).

Names load on first use (PEP 562): ``import ollama_meter.ledger`` or a command
that only reads the ledger never pays for the Ollama client, HTTP or rich.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names
from ollama_meter._version import __version__

if TYPE_CHECKING:
    from ollama_meter._client import (
        AsyncMeteredClient,
        MeteredChatResponse,
        MeteredClient,
        MeteredEmbedResponse,
        MeteredGenerateResponse,
        MeterInfo,
    )
    from ollama_meter._logging import configure_logging
    from ollama_meter.config import Settings, load_settings
    from ollama_meter.errors import (
        BudgetError,
        BudgetExceeded,
        CircuitOpen,
        ConfigError,
        InvalidRequest,
        LedgerError,
        ModelNotFound,
        OmeterError,
        PricingError,
        RateLimited,
        StreamError,
        UpstreamBadRequest,
        UpstreamConnectionError,
        UpstreamError,
        UpstreamServerError,
        UpstreamTimeout,
        ValidationError,
    )
    from ollama_meter.meter import Attribution
    from ollama_meter.records import SpanRecord

_ERRORS = (
    "BudgetError", "BudgetExceeded", "CircuitOpen", "ConfigError", "InvalidRequest", "LedgerError",
    "ModelNotFound", "OmeterError", "PricingError", "RateLimited", "StreamError",
    "UpstreamBadRequest", "UpstreamConnectionError", "UpstreamError", "UpstreamServerError",
    "UpstreamTimeout", "ValidationError",
)  # fmt: skip
_CLIENT = (
    "AsyncMeteredClient", "MeteredChatResponse", "MeteredClient", "MeteredEmbedResponse",
    "MeteredGenerateResponse", "MeterInfo",
)  # fmt: skip
_WHERE: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "ollama_meter.errors"),
    **dict.fromkeys(_CLIENT, "ollama_meter._client"),
    "configure_logging": "ollama_meter._logging",
    "Settings": "ollama_meter.config",
    "load_settings": "ollama_meter.config",
    "Attribution": "ollama_meter.meter",
    "SpanRecord": "ollama_meter.records",
}
"""Public name → the module that defines it, imported when the name is first read."""


__getattr__ = lazy_names(globals(), _WHERE)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AsyncMeteredClient",
    "Attribution",
    "BudgetError",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "InvalidRequest",
    "LedgerError",
    "MeterInfo",
    "MeteredChatResponse",
    "MeteredClient",
    "MeteredEmbedResponse",
    "MeteredGenerateResponse",
    "ModelNotFound",
    "OmeterError",
    "PricingError",
    "RateLimited",
    "Settings",
    "SpanRecord",
    "StreamError",
    "UpstreamBadRequest",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamServerError",
    "UpstreamTimeout",
    "ValidationError",
    "__version__",
    "configure_logging",
    "load_settings",
]
