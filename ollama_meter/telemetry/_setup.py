"""Exporters from configuration: OTLP (http/protobuf or grpc), Langfuse, Traceloop.

Providers are ometer's own, not the global ones, so an application that also
uses OpenTelemetry keeps its setup. Every exporter is bounded by its timeout (see
:func:`export_timeout`); at exit the providers flush within the longest and a
collector that could not be reached costs one warning line, never the call.
"""

from __future__ import annotations

import atexit
import base64
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util.re import parse_env_headers

from ollama_meter._forks import ChildLock
from ollama_meter._urls import langfuse_traces
from ollama_meter._version import __version__
from ollama_meter.config import Settings
from ollama_meter.telemetry._ids import OwnIds
from ollama_meter.telemetry._observer import TelemetryObserver
from ollama_meter.telemetry._size import batch_size
from ollama_meter.telemetry._terminated import stop_on_sigterm, unless_ending
from ollama_meter.telemetry._timeouts import export_bound, export_timeout, warn_if_meant_as_seconds
from ollama_meter.telemetry._watch import Bounded, Reporting, Watched, WatchedMetrics, flushing

log = logging.getLogger("ollama_meter.telemetry")

PLAIN_BATCH = 512
"""Spans per export (the SDK's default): a few KB each."""
CONTENT_BATCH = 64
"""Spans per export when prompts and replies go with them (see ``MAX_EXPORTED_TEXT``). What
bounds an export is its bytes (``_size.MAX_REQUEST_BYTES``, under the 4 MiB a gRPC collector
accepts by default, which refuses a larger request whole): a batch past it is sent in parts."""
METRIC_BATCH = 1000
"""Metric points per export (at most ~1.5 KB each with names at their bounds: ~1.5 MB). Every
model name a caller sends is a point of each instrument, up to the SDK's 2,000: in one export,
over 4 MiB, which a gRPC collector refused whole every minute, and no metric arrived."""


def _otlp(signal: str, endpoint: str, settings: Settings, session: Any = None) -> tuple[str, Any]:
    """The OTLP exporter for ``signal`` (traces, metrics) by the protocol set, and where it sends.

    grpc sends to ``endpoint`` itself; http/protobuf to the signal's own endpoint setting, if
    given, else the signal's path under ``endpoint``. Imported only when asked.
    """
    exporter: Any
    grpc = settings.otlp_of("protocol", signal) == "grpc"
    if grpc:
        from ollama_meter.telemetry._grpc import import_grpc_quietly

        import_grpc_quietly()
    if signal == "traces" and grpc:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as exporter,
        )
    elif signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as exporter,
        )
    elif grpc:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as exporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as exporter,
        )
    # The signal's own headers, else the general ones, never both merged (the spec's rule;
    # the exporters merged the environment's under ours, so the general value of a header
    # both name won): given whole, the exporter reads no other.
    headers = dict(parse_env_headers(settings.otlp_of("headers", signal) or "", liberal=True))
    timeout, timeout_name = export_timeout(settings, signal)
    warn_if_meant_as_seconds(timeout, timeout_name)
    options: dict[str, Any] = {"headers": headers, "timeout": timeout}
    if signal == "metrics":
        options["max_export_batch_size"] = METRIC_BATCH
    if grpc:
        from ollama_meter.telemetry._grpc import heard

        insecure = endpoint.startswith("http://")
        options.update(endpoint=endpoint, insecure=insecure)
        return endpoint, heard(exporter, session, **options)
    url = getattr(settings, f"otlp_{signal}_endpoint") or f"{endpoint.rstrip('/')}/v1/{signal}"
    return url, exporter(endpoint=url, session=session or _session(), **options)


def _session(*, only: dict[str, str] | None = None) -> Any:
    """An OTLP/HTTP exporter's session: it reads a collector's answer within bounds.

    ``only``: the headers of a place that is not the collector; no other is sent there."""
    from ollama_meter.telemetry._session import BoundedSession

    return BoundedSession(keep=None if only is None else only.keys())


def _answers(settings: Settings, signal: str) -> Any:
    """What the collector's answers to ``signal``'s exports are read by, by protocol."""
    if settings.otlp_of("protocol", signal) != "grpc":
        return _session()
    from ollama_meter.telemetry._grpc import GrpcAnswers

    return GrpcAnswers()


def _span_exporters(settings: Settings) -> list[Watched]:
    timeout = settings.export_timeout
    exporters: list[Watched] = []
    traces = settings.otlp_of("endpoint", "traces")
    if traces:
        session = _answers(settings, "traces")
        exporters.append(Watched(*_otlp("traces", traces, settings, session), answers=session))
    if settings.langfuse_public_key and settings.langfuse_secret_key and settings.langfuse_host:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        secret = settings.langfuse_secret_key.get_secret_value()
        token = base64.b64encode(f"{settings.langfuse_public_key}:{secret}".encode()).decode()
        url = langfuse_traces(settings.langfuse_host)
        langfuse = {"authorization": f"Basic {token}", "x-langfuse-ingestion-version": "4"}
        session = _session(only=langfuse)
        exporters.append(
            Watched(
                url,
                Http(endpoint=url, headers=langfuse, timeout=timeout, session=session),
                answers=session,
            )
        )
    if settings.traceloop_api_key:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        url = f"{settings.traceloop_base_url.rstrip('/')}/v1/traces"
        key = settings.traceloop_api_key.get_secret_value()
        bearer = {"authorization": f"Bearer {key}"}
        session = _session(only=bearer)
        exporters.append(
            Watched(
                url,
                Http(endpoint=url, headers=bearer, timeout=timeout, session=session),
                answers=session,
            )
        )
    return exporters


def _metric_exporter(settings: Settings) -> WatchedMetrics | None:
    endpoint = settings.otlp_of("endpoint", "metrics")
    if not endpoint:
        return None
    session = _answers(settings, "metrics")
    return WatchedMetrics(*_otlp("metrics", endpoint, settings, session), answers=session)


def _sampler(settings: Settings) -> sampling.Sampler:
    """The ``OTEL_TRACES_SAMPLER`` settings checks took (the SDK's own reading logs a raw
    line for an unset ratio, which the spec says is 1.0)."""
    name, probability = settings.traces_sampler()
    root: sampling.Sampler = sampling.ALWAYS_ON
    if name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    elif name.endswith("traceidratio"):
        root = sampling.TraceIdRatioBased(probability)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def _quietly(work: Callable[[], object]) -> None:
    try:
        work()
    except Exception:  # exit must not fail because a collector did
        log.debug("telemetry flush failed", exc_info=True)


def _resource(name: str | None) -> Resource:
    """Who exports: ``OTEL_SERVICE_NAME``, else a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``
    (the SDK reads it), else ``ollama-meter``, as the spec orders them; ometer's version."""
    named = {"service.name": name} if name else {}
    resource = Resource.create({**named, "service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "ollama-meter"}))  # the SDK's default
    return resource


_open: list[Telemetry] = []
"""Every telemetry of the process not yet stopped: at exit they stop together."""
_ending: dict[int, Telemetry] = {}
"""Every telemetry whose stop has begun and not ended, by id: a SIGTERM waits for them."""
_timeouts: set[float] = set()
"""Each bound of a telemetry of the process (the longest of its exporters' timeouts)."""
_lock = ChildLock()


def stop_together(telemetries: Sequence[Telemetry]) -> None:
    """Stop ``telemetries`` at once: within the longest export timeout among them,
    not their sum, with one warning line for the places that failed.

    A process has one telemetry per configuration (a client with its own Langfuse or
    Traceloop key is one): stopped one after the other at exit, each waited its whole timeout
    for a collector that never answered (three clients, three times the bound and three
    lines)."""
    _waited([telemetry for telemetry in telemetries if telemetry._begin_stop()])


def _waited(begun: Sequence[Telemetry]) -> None:
    """Wait for the stops ``begun``, each up to its deadline; one warning line for them."""
    failed: list[str] = []
    late: list[str] = []
    waited = (0.0, "")
    for telemetry in begun:
        its_failed, its_late = telemetry._end_stop()
        failed += its_failed
        late += its_late
        if its_late:
            waited = max(waited, (telemetry.timeout, telemetry.timeout_name))
    names = ", ".join(dict.fromkeys([*failed, *late]))
    if late:
        sys.stderr.write(
            f"warning: could not export telemetry to {names} within {waited[1]} "
            f"({waited[0]:g} s); what was not sent is dropped\n"
        )
    elif failed:
        sys.stderr.write(f"warning: could not export telemetry to {names}\n")


class _Children:
    """What :func:`multiprocessing.util.register_after_fork` holds (weakly) to call in each child."""


_CHILDREN = _Children()
_at_a_childs_exit: list[int] = []
"""The processes whose multiprocessing children stop telemetry as they exit."""


def _stop_at_a_childs_exit(_: object = None) -> None:
    """Stop telemetry as a :mod:`multiprocessing` child exits (this process, if it is one, and
    each it starts): such a child leaves by ``os._exit``, running no :mod:`atexit` handler, and
    the spans of its last calls were never sent. After the calls it left open are closed
    (their finalizer's priority is 0, this one's -1); the child's own finalizers only, which
    it clears as it starts: so this is registered anew in each. A SIGTERM (how a pool ends
    its workers, and a service manager a program) stops it too (``_terminated``)."""
    from multiprocessing import util

    if os.getpid() in _at_a_childs_exit:
        return
    _at_a_childs_exit.append(os.getpid())
    util.Finalize(None, _stop_open, exitpriority=-1)
    util.register_after_fork(_CHILDREN, _stop_at_a_childs_exit)
    stop_on_sigterm(_stop_all, lambda: max(_timeouts, default=0.0))


def _stop_all() -> None:
    """Stop the open telemetries, and wait for those another thread is stopping: a pool's
    worker may be exiting on its own when the pool's SIGTERM comes, which cut that stop."""
    with _lock:
        telemetries, ending = list(_open), list(_ending.values())
    _waited([*[telemetry for telemetry in telemetries if telemetry._begin_stop()], *ending])


def _stop_open() -> None:
    unless_ending()
    with _lock:
        telemetries = list(_open)
    stop_together(telemetries)


def stop_with_its_runtime(telemetry: Telemetry) -> None:
    """The runtime's closer: ``telemetry`` and the others of its runtime stop together (a
    runtime closes its parts one by one; an application that embeds ometer resets it)."""
    with _lock:
        peers = [
            other
            for other in _open
            if telemetry.owner is not None and other.owner is telemetry.owner
        ]
    stop_together([telemetry, *peers])


class Telemetry:
    """The providers, the observer the meter calls, and a bounded flush for exit."""

    def __init__(self, settings: Settings, owner: object = None) -> None:
        self.owner = owner  # the runtime that shares it, if one does
        resource = _resource(settings.otel_service_name)
        self.timeout, self.timeout_name = export_bound(settings)  # how long the exit waits
        _timeouts.add(self.timeout)
        self.span_exporters = _span_exporters(settings)
        # The SDK's own exit hooks flush again, unbounded (a flush ignores its timeout, and a
        # collector that never answers costs the export timeout per batch queued): only
        # ``shutdown`` below runs at exit, within the bound.
        self.tracer_provider = TracerProvider(  # ids not from the program's ``random``
            resource=resource, sampler=_sampler(settings), id_generator=OwnIds(),
            shutdown_on_exit=False,
        )  # fmt: skip
        batch = CONTENT_BATCH if settings.capture_content else PLAIN_BATCH
        self.processors = [
            Bounded(
                exporter,
                BatchSpanProcessor(
                    exporter,
                    export_timeout_millis=int(self.timeout * 1000),
                    max_export_batch_size=batch_size(batch, exporter.queue_size),
                    max_queue_size=exporter.queue_size,
                ),
            )
            for exporter in self.span_exporters
        ]
        for processor in self.processors:
            self.tracer_provider.add_span_processor(processor)
        self.metric_exporter = _metric_exporter(settings)
        self.meter_provider: MeterProvider | None = None
        if self.metric_exporter is not None:
            reader = PeriodicExportingMetricReader(  # OTEL_METRIC_EXPORT_INTERVAL, else 60 s
                self.metric_exporter, export_timeout_millis=self.timeout * 1000
            )
            self.meter_provider = MeterProvider(
                resource=resource, metric_readers=[reader], shutdown_on_exit=False
            )
        tracer = self.tracer_provider.get_tracer("ollama_meter", __version__)
        meter = (
            self.meter_provider.get_meter("ollama_meter", __version__)
            if self.meter_provider
            else None
        )
        self.observer = TelemetryObserver(tracer, meter, capture_content=settings.capture_content)
        # The SDK logs every failed export with a traceback; one line at exit says it better.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
        self._closed = False
        self._flushing: list[tuple[str, threading.Thread]] = []
        self._stopping: tuple[threading.Thread, float] | None = None  # the worker, its deadline
        self._stopped = threading.Event()
        with _lock:
            if not _open:
                atexit.register(_stop_open)
                _stop_at_a_childs_exit()
            _open.append(self)

    def flush(self) -> bool:
        millis = int(self.timeout * 1000)
        with flushing():  # bounded: a collector's wait is its export thread's to wait out
            done = self.tracer_provider.force_flush(millis)
            if self.meter_provider is not None:
                done = self.meter_provider.force_flush(millis) and done
        return done

    def failures(self) -> list[str]:
        """Where exports failed, each place once (grpc sends traces and metrics to one)."""
        return [name for name, failed in self._exporters().items() if failed]

    def shutdown(self) -> None:
        """Flush and stop within ``OMETER_EXPORT_TIMEOUT`` in all; warn if a collector failed.

        Each exporter has its own timeout and retries, and flush, shutdown and the metric
        reader each take up to that long: run together they could take several times the
        setting. So they run on a thread the exit waits for, at most the setting, once, and
        it flushes every place at once, so a dead one never costs another its last spans.
        """
        stop_together([self])

    def _begin_stop(self) -> bool:
        """Start stopping on a thread of its own; False if it was stopped already."""
        with _lock:
            if self._closed:
                return False
            self._closed = True
            if self in _open:
                _open.remove(self)
            # Known as stopping before its thread starts (it ends by taking itself out): a
            # SIGTERM's handler that interrupts this thread here waits for it all the same.
            worker = threading.Thread(target=self._stop, name="ometer-telemetry-exit", daemon=True)
            self._stopping, _ending[id(self)] = (worker, time.monotonic() + self.timeout), self
        for exporter in self._watchers():
            exporter.quiet = True  # the line stop_together writes says it
        worker.start()
        return True

    def _end_stop(self) -> tuple[list[str], list[str]]:
        """Wait for the stop begun, up to its deadline: the places that failed, and the places
        still exporting when it passed."""
        assert self._stopping is not None
        self._stopped.wait(max(0.0, self._stopping[1] - time.monotonic()))
        failed = self.failures()
        if self._stopped.is_set():  # not the thread: it may never start (see _begin_stop)
            return failed, []
        late = [name for name, flush in self._flushing if flush.is_alive()]
        return failed, list(dict.fromkeys([*failed, *late])) or self.exporter_names()

    def exporter_names(self) -> list[str]:
        return list(self._exporters())

    def _watchers(self) -> list[Reporting]:
        exporters: list[Reporting] = [*self.span_exporters]
        if self.metric_exporter is not None:
            exporters.append(self.metric_exporter)
        return exporters

    def _exporters(self) -> dict[str, bool]:
        """Each place exports go, once, and whether an export there failed."""
        places: dict[str, bool] = {}
        for exporter in self._watchers():
            places[exporter.name] = places.get(exporter.name, False) or exporter.failed
        return places

    def _stop(self) -> None:
        millis = int(self.timeout * 1000)
        flushes: list[tuple[str, Callable[[], object]]] = [
            (processor.exporter.name, functools.partial(processor.force_flush, millis))
            for processor in self.processors
        ]
        if self.meter_provider is not None and self.metric_exporter is not None:
            flushes.append(
                (
                    self.metric_exporter.name,
                    functools.partial(self.meter_provider.force_flush, millis),
                )
            )
        # Every place at once: one after the other, a collector that never answers used up
        # the whole bound and the places after it (Langfuse) never got the last spans.
        self._flushing = [
            (name, threading.Thread(target=_quietly, args=(flush,), daemon=True))
            for name, flush in flushes
        ]
        for _, worker in self._flushing:
            worker.start()
        for _, worker in self._flushing:
            worker.join()
        try:
            self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis=self.timeout * 1000)
        except Exception:  # exit must not fail because a collector did
            log.debug("telemetry shutdown failed", exc_info=True)
        finally:
            _ending.pop(id(self), None)
            self._stopped.set()
