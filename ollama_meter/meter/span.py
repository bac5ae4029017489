"""The cost span: one record per metered call, as pure data.

Owns the record's fields and vocabularies (status, source, token source) and
id generation. It knows nothing of databases, HTTP or rendering; the ledger maps
it to a row, telemetry maps it to an OTel span.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ollama_meter.pricing import Cost


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    REJECTED = "rejected"
    CLIENT_ABORT = "client_abort"


class Source(StrEnum):
    CLI = "cli"
    GATEWAY = "gateway"
    SDK = "sdk"


class TokenSource(StrEnum):
    REPORTED = "reported"
    ESTIMATED = "estimated"


class DurationSource(StrEnum):
    """Who timed a call's busy time (prompt evaluation and generation)."""

    REPORTED = "reported"
    """Ollama, in its final chunk: exact."""
    MEASURED = "measured"
    """The meter's clock, where Ollama said nothing (its OpenAI-compatible routes, an
    aborted stream): an upper bound, since it includes network, queueing and loading."""


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_span_row_id(now_ns: int | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 chars.

    Sorting ids sorts spans by start time (to the millisecond), and the random
    part makes collisions across processes and gateways practically impossible.
    """
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_otel_span_id() -> str:
    return os.urandom(8).hex()


@dataclass(slots=True)
class SpanRecord:
    """Everything the ledger keeps about one call (DESIGN §5).

    Times are aware UTC datetimes; durations are integer nanoseconds; money is
    integer micro-units of ``currency``.
    """

    id: str
    trace_id: str
    span_id: str
    started_at: datetime
    tenant: str
    department: str
    source: str
    operation: str
    upstream_host: str
    request_model: str
    stream: bool
    currency: str
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    ended_at: datetime | None = None
    response_model: str | None = None
    status: str = Status.OK
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    done_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    token_source: str = TokenSource.REPORTED
    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_duration_ns: int | None = None
    eval_duration_ns: int | None = None
    duration_source: str | None = None
    latency_ns: int | None = None
    ttft_ns: int | None = None
    cost_tokens: int = 0
    cost_compute: int = 0
    cost_energy: int = 0
    cost_fee: int = 0
    cost_total: int = 0
    price_rule_id: int | None = None
    unpriced: bool = True
    prompt: str | None = None
    reply: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    """Extra attributes hooks add for telemetry; not stored in the ledger."""

    @property
    def model(self) -> str:
        """The model the call ran on: Ollama's answer when it gave one."""
        return self.response_model or self.request_model

    def durations(self) -> dict[str, int | None]:
        """Ollama's durations and the client's timings, in nanoseconds."""
        return {
            "total": self.total_duration_ns,
            "load": self.load_duration_ns,
            "prompt_eval": self.prompt_eval_duration_ns,
            "eval": self.eval_duration_ns,
            "latency": self.latency_ns,
            "ttft": self.ttft_ns,
        }

    @property
    def unpriced_usage(self) -> bool:
        """Usage that no price rule covered: worth flagging, unlike a failure that consumed nothing."""
        return self.unpriced and (
            self.status == Status.OK or self.input_tokens + self.output_tokens > 0
        )

    def apply_cost(self, cost: Cost) -> None:
        self.cost_tokens = cost.tokens
        self.cost_compute = cost.compute
        self.cost_energy = cost.energy
        self.cost_fee = cost.fee
        self.cost_total = cost.total
        self.currency = cost.currency
        self.price_rule_id = cost.rule_id
        self.unpriced = cost.unpriced

    def as_row(self) -> dict[str, Any]:
        """Column name → value, as the ledger stores it."""
        return {name: getattr(self, name) for name in _ROW_FIELDS}


_ROW_FIELDS: tuple[str, ...] = tuple(
    name for name in SpanRecord.__dataclass_fields__ if name != "attributes"
)
