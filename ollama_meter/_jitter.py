"""The random part of a retry's wait, and a telemetry span's ids, from a generator of
ometer's own.

A program that seeds Python's ``random`` for a run it can repeat (a simulation, a test
suite, a sampled evaluation) gets the numbers it would have got without ometer: an
Ollama call retried, an alert sent again, or an OTel span made for a call took some from it.
"""

from __future__ import annotations

import os
import random

_OWN = random.Random()
if hasattr(os, "register_at_fork"):  # each forked worker its own waits, as random's are
    os.register_at_fork(after_in_child=_OWN.seed)


def jittered(seconds: float) -> float:
    """``seconds`` and up to half as much again, at random."""
    return seconds * (1 + _OWN.random() / 2)


def own_bits(bits: int) -> int:
    """A number of ``bits`` random bits (an OTel trace or span id)."""
    return _OWN.getrandbits(bits)


def own_uniform(low: float, high: float) -> float:
    """A number between ``low`` and ``high``, at random."""
    return _OWN.uniform(low, high)
