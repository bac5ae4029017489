"""How a call ends: its outcome on its span.

Owns the words a span's status is said in (ok, Ollama's failure as classified, an abort,
a failure of ours); never the measuring, pricing or writing, which are the meter's.
"""

from __future__ import annotations

from ollama_meter.errors import UpstreamError
from ollama_meter.meter._call import CALLER_STOPPED
from ollama_meter.records import NO_HOST, SpanRecord, Status


def mark_ended(span: SpanRecord, error: BaseException | None) -> None:
    """Say on the span how its call ended: ok, Ollama's failure as classified, an abort
    (its caller stopped it: :data:`CALLER_STOPPED`), or a failure of ours, by its type."""
    if error is None:
        span.status = Status.OK
        span.http_status = 200
    elif isinstance(error, UpstreamError):
        span.fail(error.error_type, str(error), http_status=error.status_code)
        if not error.reached_upstream:  # never left this process: no server's call
            span.upstream_host = NO_HOST
    elif isinstance(error, CALLER_STOPPED):
        span.fail("client_abort", status=Status.CLIENT_ABORT)
    else:
        span.fail(type(error).__name__, str(error))
