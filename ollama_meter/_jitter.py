"""The random part of a retry's wait, from a generator of ometer's own.

A program that seeds Python's ``random`` for a run it can repeat (a simulation, a test
suite, a sampled evaluation) gets the numbers it would have got without ometer: an
Ollama call retried, or an alert sent again, took one from it.
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
