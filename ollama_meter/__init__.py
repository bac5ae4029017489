"""ollama-meter: who uses your Ollama models, what each call costs, where the time goes.

The public Python surface. Everything else is reached through the ``ometer``
command or the subpackages (``ollama_meter.testing`` for the Ollama emulator).

Names load on first use (PEP 562): ``import ollama_meter.ledger`` or a command
that only reads the ledger never pays for the Ollama client, HTTP or rich.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names, names_in
from ollama_meter._version import __version__ as __version__

if TYPE_CHECKING:
    from ollama_meter._answers import (
        MeteredChatResponse as MeteredChatResponse,
        MeteredEmbeddingsResponse as MeteredEmbeddingsResponse,
        MeteredEmbedResponse as MeteredEmbedResponse,
        MeteredGenerateResponse as MeteredGenerateResponse,
        MeterInfo as MeterInfo,
    )
    from ollama_meter._client import (
        AsyncMeteredClient as AsyncMeteredClient,
        MeteredClient as MeteredClient,
    )
    from ollama_meter._logging import configure_logging as configure_logging
    from ollama_meter.config import Settings as Settings, load_settings as load_settings
    from ollama_meter.errors import (
        BudgetError as BudgetError,
        BudgetExceeded as BudgetExceeded,
        CircuitOpen as CircuitOpen,
        ClientClosed as ClientClosed,
        ConfigError as ConfigError,
        InvalidRequest as InvalidRequest,
        LedgerError as LedgerError,
        ModelNotFound as ModelNotFound,
        OmeterError as OmeterError,
        PricingError as PricingError,
        RateLimited as RateLimited,
        StreamError as StreamError,
        UpstreamBadRequest as UpstreamBadRequest,
        UpstreamConnectionError as UpstreamConnectionError,
        UpstreamError as UpstreamError,
        UpstreamServerError as UpstreamServerError,
        UpstreamTimeout as UpstreamTimeout,
        ValidationError as ValidationError,
    )
    from ollama_meter.meter import Attribution as Attribution
    from ollama_meter.records import SpanRecord as SpanRecord

_NAMES = {
    "ollama_meter._answers": "MeteredChatResponse MeteredEmbedResponse MeteredEmbeddingsResponse "
    "MeteredGenerateResponse MeterInfo",
    "ollama_meter._client": "AsyncMeteredClient MeteredClient",
    "ollama_meter._logging": "configure_logging",
    "ollama_meter.config": "Settings load_settings",
    "ollama_meter.errors": "BudgetError BudgetExceeded CircuitOpen ClientClosed ConfigError "
    "InvalidRequest "
    "LedgerError ModelNotFound OmeterError PricingError RateLimited StreamError "
    "UpstreamBadRequest UpstreamConnectionError UpstreamError UpstreamServerError "
    "UpstreamTimeout ValidationError",
    "ollama_meter.meter": "Attribution",
    "ollama_meter.records": "SpanRecord",
}
"""Module → the public names it defines, each imported when the name is first read."""

_WHERE = names_in(_NAMES)
__getattr__ = lazy_names(globals(), _WHERE)
__all__ = ["__version__", *_WHERE]  # noqa: PLE0604 (mypy reads the `as` imports above)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
