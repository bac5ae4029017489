"""Ollama's model options (a request's ``options``): the kind of value each takes, as Ollama
reads it, so a value it would refuse, or read as another, is refused before it is sent.

Ollama decodes ``options`` into Go's ``map[string]any``: every number becomes a 64-bit float,
then goes into its field (``api.Options.FromMap``): an ``int`` field takes the float cut to a
whole number (``seed: 1.5`` ran as 1; past 2^53 a whole number is not the float it becomes,
and past 2^63 no ``int`` holds it), a ``float32`` field the float rounded (past 3.4e38 it is
infinite). A value of another JSON kind is refused in Ollama's words (``option "seed" must
be of type integer``), a number past a float's range too (a 400-digit seed). Options Ollama
does not know it ignores, and so are they passed on as given here.

The options and their kinds are those of Ollama's API reference (docs/api.md, "Generate
request (With options)") and ``api/types.go``. Pure: no I/O.
"""

from __future__ import annotations

import math
from typing import Any, Final

WHOLE: Final = "a whole number"
NUMBER: Final = "a number"
SWITCH: Final = "true or false"
STRINGS: Final = "a list of strings"

OPTION_KINDS: Final[dict[str, str]] = {
    **dict.fromkeys(
        (
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "mirostat",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
        ),
        WHOLE,
    ),
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "typical_p",
            "tfs_z",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
        ),
        NUMBER,
    ),
    **dict.fromkeys(
        (
            "penalize_newline",
            "numa",
            "low_vram",
            "f16_kv",
            "logits_all",
            "vocab_only",
            "use_mmap",
            "use_mlock",
        ),
        SWITCH,
    ),
    "stop": STRINGS,
}
"""Each option Ollama knows, and the kind of value it takes."""

EXACT_WHOLE: Final = 2**53
"""The largest whole number Ollama reads as itself (a 64-bit float holds every one up to it)."""
FLOAT32_MAX: Final = 3.4028234663852886e38
"""The largest number a 32-bit float holds: past it Ollama's option is infinite."""
_EXAMPLES: Final = {WHOLE: "42", NUMBER: "0.2", SWITCH: "true", STRINGS: '["\\n", "user:"]'}


def option_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for Ollama's option ``key`` (None: nothing Ollama would
    refuse or read as another value), said as the end of a sentence that names the option:
    ``takes a whole number, e.g. seed=42``."""
    kind = OPTION_KINDS.get(key)
    if kind is None or value is None:  # unknown (ignored by Ollama), or null (left unset)
        return None
    if kind == SWITCH:
        fits = isinstance(value, bool)
    elif kind == STRINGS:
        fits = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    if not fits:
        return f"takes {kind}, e.g. {key}={_EXAMPLES[kind]}"
    if kind == WHOLE:
        if isinstance(value, float) and not value.is_integer():
            return f"takes {kind}: Ollama would cut {value!r} to {math.trunc(value)}"
        if abs(value) > EXACT_WHOLE:
            return (
                f"takes {kind} from -2^53 to 2^53 ({EXACT_WHOLE:,}): Ollama reads numbers as "
                "64-bit floats, which hold no larger whole number exactly"
            )
    elif kind == NUMBER and abs(value) > FLOAT32_MAX:
        return (
            f"takes {kind} from -{FLOAT32_MAX:.7g} to {FLOAT32_MAX:.7g}: Ollama keeps it as "
            "a 32-bit float, past that infinite"
        )
    return None
