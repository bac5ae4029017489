"""The ids of ometer's OTel spans, drawn from ometer's own generator (``_jitter``).

The SDK's default generator draws each trace and span id from Python's global ``random``:
every call metered with OTLP export on moved the numbers of a program that seeded it. The
ids are as random, and as apart across forked workers, as the SDK's."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator

from ollama_meter._jitter import own_bits


class OwnIds(IdGenerator):
    """Random trace and span ids, never the invalid (all-zero) one."""

    def generate_span_id(self) -> int:
        while (span_id := own_bits(64)) == trace.INVALID_SPAN_ID:
            pass
        return span_id

    def generate_trace_id(self) -> int:
        while (trace_id := own_bits(128)) == trace.INVALID_TRACE_ID:
            pass
        return trace_id
