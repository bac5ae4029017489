"""A stand-in Ollama server for tests and the demo, speaking the real REST API.

Owns the public face of the emulator: :class:`OllamaEmulator` (the server),
:class:`EmulatedModel` and :data:`DEFAULT_MODELS` (what it has "pulled"; :data:`THINKING_MODEL`
thinks, and is pulled when a test asks for it; :data:`REAL_TIME_MODELS` are the same at a GPU's
pace, :data:`REAL_TIME` times slower: the emulator spends every time it reports),
:class:`Fault` (run-time misbehaviour) with Ollama's own error texts
(:data:`ERROR_500`, :data:`ERROR_503`, :data:`ERROR_MIDSTREAM`), and the pure
helpers that say in advance what it will answer (:func:`expected_reply`,
:func:`expected_counts`, :func:`expected_embedding`) or give an address where
nothing answers (:func:`unreachable_url`, :func:`unused_port`).

Typical use::

    with OllamaEmulator() as emu:
        client = ollama.Client(host=emu.url)
        emu.inject(Fault.HTTP_503, times=2)
        ...

Run ``python -m ollama_meter.testing`` to serve it in the foreground.
"""

from ollama_meter.testing._emulator import OllamaEmulator, unreachable_url, unused_port
from ollama_meter.testing._faults import Fault
from ollama_meter.testing._http import HANG_LIMIT_S
from ollama_meter.testing._models import (
    DEFAULT_MODELS,
    OVERHEAD_NS,
    REAL_TIME,
    REAL_TIME_MODELS,
    THINKING_MODEL,
    WARM_LOAD_NS,
    EmulatedModel,
    ExpectedReply,
    at_real_time,
    expected_counts,
    expected_embedding,
    expected_reply,
)
from ollama_meter.testing._routes import RecordedRequest
from ollama_meter.testing._wire import ERROR_500, ERROR_503, ERROR_MIDSTREAM, OLLAMA_VERSION

__all__ = [
    "DEFAULT_MODELS",
    "ERROR_500",
    "ERROR_503",
    "ERROR_MIDSTREAM",
    "HANG_LIMIT_S",
    "OLLAMA_VERSION",
    "OVERHEAD_NS",
    "REAL_TIME",
    "REAL_TIME_MODELS",
    "THINKING_MODEL",
    "WARM_LOAD_NS",
    "EmulatedModel",
    "ExpectedReply",
    "Fault",
    "OllamaEmulator",
    "RecordedRequest",
    "at_real_time",
    "expected_counts",
    "expected_embedding",
    "expected_reply",
    "unreachable_url",
    "unused_port",
]
