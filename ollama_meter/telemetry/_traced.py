"""A call's OTel span in its caller's trace, and named to what the call calls in turn.

The gateway's span of a call is the child of the caller's span its ``traceparent`` named
(``records.TraceParent``, read by the gateway); with the default ``parentbased_always_on``
sampler, a caller's unsampled trace is not sampled here either, as OpenTelemetry's samplers
decide. Whatever the call calls (Ollama, a gateway behind) is told the call's own span.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.span import TraceState

from ollama_meter.records import TraceParent


def parent_context(parent: TraceParent | None) -> Context | None:
    """The context a span whose caller is ``parent`` starts in; None: the current one (a
    program's own span, around a call of the Python API)."""
    if parent is None:
        return None
    remote = SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(parent.flags & TraceFlags.SAMPLED),
        # OpenTelemetry's reader of a state leaves out what it does not take (a key that
        # begins with a digit, which W3C allows now): the headers carry the whole of it.
        trace_state=TraceState.from_header([parent.state]) if parent.state else None,
    )
    return set_span_in_context(NonRecordingSpan(remote))


def traced(otel: Span, parent: TraceParent | None) -> TraceParent:
    """``otel`` named as a parent: its ids, whether it is sampled, and its trace's state as the
    caller sent it (ometer adds no entry of its own), else as the program's span has it."""
    context = otel.get_span_context()
    state = parent.state if parent is not None else context.trace_state.to_header()
    flags = TraceFlags.SAMPLED if context.trace_flags.sampled else TraceFlags.DEFAULT
    return TraceParent(f"{context.trace_id:032x}", f"{context.span_id:016x}", flags, state)
