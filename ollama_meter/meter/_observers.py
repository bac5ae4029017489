"""What watches calls (telemetry, alerts, user hooks), and how the meter tells them.

An observer's failure is logged, never fatal to the call it watches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ollama_meter.records import SpanRecord

log = logging.getLogger("ollama_meter.meter")


class SpanObserver(Protocol):
    """Something that watches calls: telemetry, alerts, user hooks. Failures are logged, never fatal."""

    def on_start(self, span: SpanRecord) -> None: ...

    def on_end(self, span: SpanRecord) -> None: ...


def may_change_spans(observers: Sequence[SpanObserver]) -> bool:
    """Whether any of ``observers`` may change a span it is told of (a hook may add tags): the
    meter's own that only read one say so with a true ``leaves_spans``, and the span they saw
    needs no second pass to be storable."""
    return any(not getattr(observer, "leaves_spans", False) for observer in observers)


def may_wait(observers: Sequence[SpanObserver]) -> bool:
    """Whether any of ``observers`` may take its time when told of a call (a user's hook: a
    webhook, a hung one) with a true ``may_wait``; the meter's own wait on nothing slow."""
    return any(getattr(observer, "may_wait", False) for observer in observers)


def reads_requests(observers: Sequence[SpanObserver]) -> bool:
    """Whether any of ``observers`` may read what a span's request asked
    (:attr:`SpanRecord.asked`): the meter's own that only count spans say so with a true
    ``counts_only``, and a span for them alone is opened without it."""
    return any(not getattr(observer, "counts_only", False) for observer in observers)


def notify(observers: Sequence[SpanObserver], hook: str, span: SpanRecord) -> BaseException | None:
    """Tell every observer; a failure is logged, an interrupt (Ctrl-C) handed back to raise.

    The interrupt is the caller's, landing in whatever ran (a slow hook): it must not
    cut the metering short, so the meter raises it once the call is recorded.
    """
    stopped: BaseException | None = None
    for observer in observers:
        try:
            getattr(observer, hook)(span)
        except Exception:
            log.exception("observer %r failed in %s; the call goes on", observer, hook)
        except BaseException as exc:
            stopped = stopped or exc
    return stopped
