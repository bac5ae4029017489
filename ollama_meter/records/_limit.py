"""A rate limit: how fast and how much a tenant, department or API key may call, and its share.

Stored in the ledger (``ometer limit set``) so every gateway on one database
enforces the same limits; the counting itself happens in each gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ollama_meter._names import name_problem

MAX_RPM = 1_000_000
"""Calls per minute: a gateway keeps one timestamp per call in the window, so this bounds it."""
MAX_TPM = 10**12
MAX_CONCURRENCY = 100_000
MAX_WEIGHT = 1000
MAX_SLOTS = 100_000
"""Calls one Ollama server runs at once through a gateway (``--slots``, ``#slots=N``)."""
MAX_QUEUE = 1_000_000
"""Calls that may wait for a slot (``--max-queue``)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """The limits of one scope; None means not limited (weight: the default, 1)."""

    tenant: str
    department: str | None = None
    """None: the whole tenant (all its departments together)."""
    key_id: int | None = None
    """Set: this API key's own limits (``department`` is then the key's)."""
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    weight: int | None = None
    updated_at: datetime | None = None

    def scope(self) -> str:
        if self.key_id is not None:
            return f"key {self.key_id} ({self.tenant}/{self.department})"
        return f"{self.tenant}/{self.department}" if self.department else f"{self.tenant} (all)"

    def describe(self) -> str:
        parts = [
            f"{self.rpm:,} calls/min" if self.rpm is not None else None,
            f"{self.tpm:,} tokens/min" if self.tpm is not None else None,
            f"{self.concurrency:,} at once" if self.concurrency is not None else None,
            f"weight {self.weight}" if self.weight is not None else None,
        ]
        return ", ".join(p for p in parts if p) or "no limits"

    def never_bound(self, under: Limit) -> list[str]:
        """The caps of this limit (``--rpm``, ``--tpm``, ``--concurrency``) that can never bind
        because ``under``, its tenant's limit on all its departments together, is as low or
        lower: every call of the department counts there too."""
        nested = self.department is not None and under.department is None
        if not nested or self.key_id is not None or under.key_id is not None:
            return []
        if self.tenant != under.tenant:
            return []
        pairs = (
            ("--rpm", self.rpm, under.rpm),
            ("--tpm", self.tpm, under.tpm),
            ("--concurrency", self.concurrency, under.concurrency),
        )
        return [
            what
            for what, own, wide in pairs
            if own is not None and wide is not None and own >= wide
        ]

    def problem(self) -> str | None:
        """What is wrong with this limit, in one line; None when nothing is."""
        for what, name in (("tenant", self.tenant), ("department", self.department)):
            if name is not None and (problem := name_problem(name)):
                return f"{what} name {problem}"
        for what, value, top in (
            ("--rpm", self.rpm, MAX_RPM),
            ("--tpm", self.tpm, MAX_TPM),
            ("--concurrency", self.concurrency, MAX_CONCURRENCY),
            ("--weight", self.weight, MAX_WEIGHT),
        ):
            if value is not None and not 1 <= value <= top:
                return f"{what} must be between 1 and {top:,}, not {value:,}"
        if self.key_id is not None and self.weight is not None:
            return (
                "a key has no weight of its own: slots are shared between departments; "
                "set --weight on the key's department"
            )
        return None
