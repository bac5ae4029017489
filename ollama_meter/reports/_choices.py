"""What a report can be asked for: the names of its groupings and modes.

Plain names only, so the command line builds its help from them without
loading the ledger or SQLAlchemy. Imports nothing of ours but records and periods.
"""

from __future__ import annotations

from typing import Literal, get_args

from ollama_meter.periods import TIME_UNITS
from ollama_meter.records import GROUPS

BY_CHOICES: tuple[str, ...] = (*GROUPS, *TIME_UNITS)
"""``ometer report --by``: any groups, and at most one time unit."""

PERF_BY_CHOICES: tuple[str, ...] = GROUPS
PERF_DEFAULT_BY: tuple[str, ...] = ("model", "department")

IDLE = "__idle__"
"""The chargeback row idle capacity gets when it is reported on its own."""
IdleMode = Literal["share", "separate"]
"""How a chargeback bills idle capacity: shared in proportion, or on its own ``IDLE`` row."""
IDLE_MODES: tuple[IdleMode, ...] = get_args(IdleMode)
