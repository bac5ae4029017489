"""Where exports go, watched: whether they fail, and the spans that did not get there.

A collector that fails, or is slower than the calls, costs spans: the SDK drops them with a
log line per span (silenced, with the rest of its logging) or, for spans a collector refuses
in a ``partial_success`` answer, without a word. Here they are counted, and said in a line
when failing starts and ends and at most every :data:`SAY_DROPS_EVERY` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ollama_meter._forks import ChildLock
from ollama_meter._jitter import own_uniform
from ollama_meter._urls import shown
from ollama_meter.telemetry._size import (
    MAX_REQUEST_BYTES,
    Placed,
    exports,
    metrics_data as metrics_data_of,
    point_bytes,
    points_of,
    span_bytes,
)
from ollama_meter.telemetry._timeouts import MAX_WAIT
from ollama_meter.telemetry._tls import Trouble

log = logging.getLogger("ollama_meter.telemetry")

DEFAULT_QUEUE = 2048
"""Spans that wait for one place at most (the SDK's default, ``OTEL_BSP_MAX_QUEUE_SIZE``)."""
MAX_WAITING_BYTES = 64 * 2**20
"""Bytes of spans (as exported) that wait for one place at most, whatever their number: with
content in a script of 4 bytes a character and a hook's attributes, 2,048 spans were 600 MB."""
SAY_DROPS_EVERY = 10.0
_SMALLEST_LIMIT = 64 * 1024
"""Bytes an export is cut to at the least, whatever a place refused as too large."""
"""Seconds between two log lines counting the spans a place did not get."""


_flushing = threading.local()
"""``on`` on a thread that flushes: the caller's bound holds, not a wait the place asked for."""


@contextlib.contextmanager
def flushing() -> Iterator[None]:
    """A flush on this thread (it exports on it): no wait a throttling place asked for is
    waited out here; spans that wait for it stay queued for the exporter's own thread."""
    _flushing.on = True
    try:
        yield
    finally:
        _flushing.on = False


def _queue_size() -> int:
    try:
        size = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE))
    except ValueError:
        return DEFAULT_QUEUE
    return size if size > 0 else DEFAULT_QUEUE


class Reporting:
    """One place exports go: whether an export there failed, and a log line when that changes.

    A gateway runs for weeks: a collector that refuses its exports (a wrong key, a full disk)
    is said when it starts and when it ends, not only at exit; one that fails every other
    export (a balancer with a dead backend) is said at most every :data:`SAY_DROPS_EVERY` s,
    not twice an export. ``quiet`` once the process is exiting, where one warning line says
    it all.
    """

    name: str
    failed = False
    failing = False
    quiet = False
    _said_failing_at: float | None = None
    _said_failing = False  # the start of this failure was said, so its end is

    def _now(self) -> float:
        return time.monotonic()

    def _saw(self, ok: bool, what: str, answered: object = 0) -> None:
        """``answered``: the status the place answered a failed export with (an HTTP status,
        a gRPC code's name; 0: none came), said with it: a wrong key (401) is no dead host."""
        if ok:
            if self.failing and self._said_failing and not self.quiet:
                log.info("exporting %s to %s again", what, self.name)
            self.failing = self._said_failing = False
            return
        self.failed = self.failing = True
        if self._said_failing or self.quiet:
            return
        now, last = self._now(), self._said_failing_at
        if last is None or now - last >= SAY_DROPS_EVERY:  # else said at its next export
            self._said_failing_at, self._said_failing = now, True
            said = f" (it answered {_status(answered)})" if _status(answered) else ""
            said = f" ({answered})" if isinstance(answered, Trouble) else said
            log.warning(
                "could not export %s to %s%s; they are dropped until it answers "
                "(the ledger keeps every call)",
                what,
                self.name,
                said,
            )


def _status(answered: object) -> str:
    """An HTTP status or a gRPC code's name as said; nothing for none (0), or for a failure
    ometer named itself (``_grpc.TooLarge``, said in a line of its own)."""
    if isinstance(answered, int):  # a success said otherwise (a web page) is no status to say
        return f"HTTP {answered}" if answered and not 200 <= answered < 300 else ""
    return str(answered) if str(answered).isupper() and not isinstance(answered, Trouble) else ""


class CutToFit(Reporting):
    """A place whose exports are cut to the bytes it takes: one it refuses as too large (413:
    a proxy's body limit in front of it; gRPC's RESOURCE_EXHAUSTED: a collector's receive
    limit) is sent again in halves, and the exports after it
    are cut that small from the start; said once. Spans and metrics alike: metrics were
    refused whole every minute, for the life of the process."""

    answers: Any  # what reads the place's answers (an OTLP exporter's), if any
    what: str  # what it exports, for the log
    limit = MAX_REQUEST_BYTES  # bytes an export holds: less once the place said so
    most: int | None = None
    """Items an export holds at most: what the exporter sends in one request. It sends a
    larger one in several, and one refused after another got there had the whole sent again."""
    _said_too_large = _said_refused = _said_throttled = False
    not_before = 0.0
    """``time.monotonic()`` before which the place asked for no export (it throttles)."""
    stopping: threading.Event  # set as the exporter shuts down: a wait for the place ends

    def _sent(
        self, items: list[Any], sizes: list[int], send: Callable[[list[Any], bool], bool | None]
    ) -> int:
        """How many of ``items`` (in order) got there, in exports of at most :attr:`limit`
        bytes; ``send(part, splittable)``: None if it got there, True if refused as too large
        (only when ``splittable``), False if it failed."""
        done, refused = 0, 0
        while done < len(items):
            part, its = next(exports(items[done:], sizes[done:], self.limit, self.most))
            too_large = send(part, len(part) > 1)
            if too_large is None:
                done += len(part)
                continue
            smaller = max(sum(its) // 2, _SMALLEST_LIMIT)
            if not too_large or smaller >= sum(its):
                if too_large:  # as small as exports get: failed
                    self._saw(False, self.what, self.answers.status)
                break
            refused = refused or sum(its)
            self.limit = min(self.limit, smaller)
        if refused and not self._said_too_large and not self.quiet:
            self._said_too_large = True
            log.warning(
                "%s refused an export of %d KiB as too large (%s); exports to it are now cut "
                "to %d KiB (raise its limit to send fewer); said once",
                self.name,
                refused // 1024,
                self.answers.refusal,
                self.limit // 1024,
            )
        return done

    def _part(
        self, send: Callable[[], object], success: object, part: list[Any], splittable: bool
    ) -> bool | None:
        """Send ``part`` by ``send()``, which answers ``success`` when it got there, as
        :meth:`_sent` sends a part; what the place took but refused (its OTLP
        ``partial_success``, which the SDK's exporters never read) is said once."""
        while True:
            if not self._held():  # stopping while the place asked to wait: not sent
                self._saw(False, self.what, self.answers.status)
                return False
            if self.answers is not None:
                self.answers.last, self.answers.status, self.answers.wait = b"", 0, None
            try:
                ok = send() is success
            except Exception:
                ok = False
            wait = None if ok or self.answers is None else self.answers.wait
            if wait is None:
                break
            self._throttled(wait)  # then the same part again
        self._said_throttled = self._said_throttled and not ok
        if not ok and splittable and self.answers is not None and self.answers.too_large:
            return True
        self._saw(ok, self.what, 0 if ok or self.answers is None else self.answers.status)
        if not ok:
            return False
        if self.answers is not None and self.answers.last:
            self._refused(self.answers.last, len(part))
        return None

    def _throttled(self, wait: float) -> None:
        """The place asked to wait ``wait`` s, longer than an export may take (OTLP: HTTP 429
        or 503 with ``Retry-After``, gRPC's RetryInfo): nothing goes to it until then, an hour
        at most (:data:`MAX_WAIT`), whatever it said. A RetryInfo is int64 seconds: a day was
        waited a day, and 3,000 years raised in the exporter's thread (past what a thread can
        wait) at every export after it, each batch lost with no count and no line."""
        wait = min(max(wait, 1.0), MAX_WAIT)  # not a loop: a second at least
        self.not_before = time.monotonic() + wait
        if not self._said_throttled and self._waits():
            self._said_throttled = True
            log.warning(
                "%s asked exports to wait %.0f s (it answered %s): they wait, and the %s "
                "meanwhile wait in the queue (the ledger keeps every call); said until it "
                "takes them",
                self.name,
                wait,
                _status(self.answers.status) or "throttling",
                self.what,
            )

    def _held(self) -> bool:
        """Whether the wait a place asked for is over, waited for here; False when the process
        stops meanwhile (or is exiting: its flush is bounded, the place's wait is not)."""
        left = self.not_before - time.monotonic()
        if left <= 0:
            return True
        return self._waits() and not self.stopping.wait(left)

    def _waits(self) -> bool:
        """Whether this thread waits out a place's throttle: the exporter's own, running."""
        return not self.quiet and not getattr(_flushing, "on", False)

    def _refused(self, answer: bytes, sent: int) -> None:
        from ollama_meter.telemetry._session import refused

        count, why = refused(answer, self.what)
        count = min(count, sent)  # a collector that says it refused more is not believed
        if not count:
            return
        if not self._said_refused and not self.quiet:
            self._said_refused = True
            unit = "spans" if self.what == "spans" else "metric points"
            log.warning("%s refused %d %s of an export: %s; said once", self.name, count, unit, why)
        self._lost(count)

    def _lost(self, count: int) -> None:
        """``count`` items the place refused (metrics are cumulative: sent again next time)."""


def own_waits(exporter: Any) -> None:
    """The jitter of ``exporter``'s waits between tries from ometer's own generator. The SDK's
    OTLP/HTTP client (OTLP over HTTP, Langfuse, Traceloop) drew it from the program's
    ``random`` before every try, even one that got there: each export moved a seeded
    program's numbers. A gRPC exporter has none (:mod:`._grpc` tries again itself)."""
    client = getattr(exporter, "_client", None)
    if client is not None and hasattr(client, "_compute_backoff"):
        spread = client._jitter
        client._compute_backoff = lambda retry: 2**retry * own_uniform(1 - spread, 1 + spread)


class Watched(CutToFit, SpanExporter):
    """A span exporter, and the count of spans that did not reach its place.

    The SDK's queue drops a span when it is full (a collector slower than the calls, or one
    that never answers) with a log line per span, which is silenced: so the queue is bounded
    here, where the drops are counted, and said at most every :data:`SAY_DROPS_EVERY` s.
    """

    def __init__(self, name: str, inner: SpanExporter, answers: Any = None) -> None:
        self.name = shown(name)
        self.inner = inner
        own_waits(inner)
        self.answers = answers
        self.what = "spans"
        self.stopping = threading.Event()
        self.clock: Callable[[], float] = time.monotonic
        self.queue_size = _queue_size()
        self.dropped = 0  # in all, since the process started
        self._waiting = self._waiting_bytes = 0  # ended and not yet handed to the exporter
        self._unsaid = 0
        self._said_at: float | None = None
        self._pid = os.getpid()
        self._lock = ChildLock()  # a forked child gets it free, whoever held it at the fork

    def _now(self) -> float:
        return self.clock()

    def admit(self, size: int = 0) -> bool:
        """Whether an ended span of ``size`` bytes may wait for an export, in number and in
        :data:`MAX_WAITING_BYTES`; counted as dropped when not."""
        with self._lock:
            if self._pid != os.getpid():  # a fork: the SDK emptied the child's queue
                self._pid, self._waiting, self._waiting_bytes = os.getpid(), 0, 0
            room = not self._waiting or self._waiting_bytes + size <= MAX_WAITING_BYTES
            if self._waiting < self.queue_size and room:
                self._waiting += 1
                self._waiting_bytes += size
                return True
        self._drop(1)
        return False

    def _drop(self, count: int) -> None:
        with self._lock:
            self.dropped += count
            self._unsaid += count
            now = self.clock()
            if self._said_at is not None and now - self._said_at < SAY_DROPS_EVERY:
                return
            since = self._said_at
            unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
        if self.quiet:
            return
        if since is None:
            log.warning("spans not sent to %s: %d (the ledger keeps every call)", self.name, unsaid)
        else:
            log.warning(
                "spans not sent to %s in the last %.0f s: %d, %d in all",
                self.name,
                now - since,
                unsaid,
                self.dropped,
            )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """``spans`` sent in exports of at most :attr:`limit` bytes each (a collector refuses
        a larger one whole); once one fails, the rest are dropped unsent, so that a
        collector away costs one export's timeout, not one per part."""
        sizes = [span_bytes(span) for span in spans]
        with self._lock:
            self._waiting = max(0, self._waiting - len(spans))
            self._waiting_bytes = max(0, self._waiting_bytes - sum(sizes))
        delivered = self._sent(list(spans), sizes, self._export)
        if delivered < len(spans):
            self._drop(len(spans) - delivered)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _export(self, spans: list[ReadableSpan], splittable: bool) -> bool | None:
        return self._part(
            lambda: self.inner.export(spans), SpanExportResult.SUCCESS, spans, splittable
        )

    def _lost(self, count: int) -> None:
        self._drop(count)  # the count goes on in the drop lines

    def shutdown(self) -> None:
        self.stopping.set()
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Bounded(SpanProcessor):
    """One place's batch processor behind :meth:`Watched.admit`: its queue never overflows."""

    def __init__(self, exporter: Watched, batch: BatchSpanProcessor) -> None:
        self.exporter = exporter
        self.batch = batch

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        # The SDK skips a span its sampler did not keep: it never waits, so never counted.
        sampled = span.context is not None and span.context.trace_flags.sampled
        if sampled and self.exporter.admit(span_bytes(span)):
            self.batch.on_end(span)

    def shutdown(self) -> None:
        self.exporter.stopping.set()  # a wait the place asked for ends: the SDK joins its thread
        self.batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self.exporter.not_before > time.monotonic():  # its place asked to wait: they wait
            return False
        return self.batch.force_flush(timeout_millis)


class WatchedMetrics(CutToFit, MetricExporter):
    """A metric exporter, its exports cut to what its place takes (:class:`CutToFit`)."""

    def __init__(self, name: str, inner: MetricExporter, answers: Any = None) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.name = shown(name)
        self.inner = inner
        own_waits(inner)
        self.answers = answers
        self.what = "metrics"
        self.stopping = threading.Event()
        self.most = getattr(inner, "_max_export_batch_size", None)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        points = points_of(metrics_data)
        sizes = [point_bytes(point[3]) for point in points]

        def send(part: list[Placed], splittable: bool) -> bool | None:
            data = metrics_data_of(part)
            export = functools.partial(self.inner.export, data, timeout_millis, **kwargs)
            return self._part(export, MetricExportResult.SUCCESS, part, splittable)

        done = self._sent(points, sizes, send)
        return MetricExportResult.SUCCESS if done == len(points) else MetricExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.stopping.set()
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)
