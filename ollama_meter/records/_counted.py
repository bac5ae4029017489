"""The one name reports count a model under, whatever the spelling it was called or answered by."""

from __future__ import annotations

import functools

from ollama_meter.records._price import model_key
from ollama_meter.records._span import TEXT_LIMITS, printable, storable_text

MODEL_LIMIT = TEXT_LIMITS["request_model"]
"""The longest model name the ledger stores (spans' and rollups' model columns alike)."""


CACHED_NAME = 4 * MODEL_LIMIT
"""The longest name :func:`counted_model` keeps its answer for: a caller may name a model of
megabytes each call (see ``_names.LONGEST_MODEL``), and a cache of thousands held gigabytes."""


def counted_model(name: str) -> str:
    """``name`` as reports group and filter it: :func:`model_key`'s form (``LLAMA3.1:8B ``,
    ``registry.ollama.ai/library/llama3.1:8b`` are ``llama3.1:8b``; ``llama3.1`` is
    ``llama3.1:latest``, as ``ollama list`` shows it), stored as the ledger stores a name
    (printable, at most :data:`MODEL_LIMIT` characters), and the same when folded again.

    A name of nothing but blanks is left as it is: it names no model. Cached: the write path
    folds every span's model.
    """
    return _cached(name) if len(name) <= CACHED_NAME else _counted(name)


def _counted(name: str) -> str:
    folded = name
    for _ in range(len(name) + 2):  # each pass that changes it drops a prefix or adds the tag
        again = _fold(folded)
        if again == folded:
            return folded
        folded = again
    return folded


_cached = functools.lru_cache(maxsize=8192)(_counted)


def _fold(name: str) -> str:
    if not name.strip():  # no name Ollama runs: nothing to fold
        return storable_text(name, MODEL_LIMIT)
    key = storable_text(model_key(name), MODEL_LIMIT)
    return printable(key)
