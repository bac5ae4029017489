"""ollama-meter: who uses your Ollama models, what each call costs, where the time goes.

The public Python surface. Everything else is reached through the ``ometer``
command or the subpackages (``ollama_meter.testing`` for the Ollama emulator).
"""

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
from ollama_meter.meter import Attribution, SpanRecord

__version__ = "0.1.0"

__all__ = [
    "AsyncMeteredClient",
    "Attribution",
    "BudgetError",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
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
