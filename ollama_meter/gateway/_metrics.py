"""``/metrics``: this gateway process's own counters and histograms, fed by a span observer.

Each process counts the calls it metered since it started, so counters only go up
(a restart starts them again, which Prometheus' ``rate()`` and ``increase()``
expect) and ``sum()`` over several gateways sharing one ledger is the truth, not a
multiple of it. Ledger-wide totals are ``/api/dash``'s job. Money is counted in
micro-units with the currency as a label, so sums never mix currencies.

Label values come from callers (tenant, department and model names), so a caller
could mint a new series with every request and swell the gateway's memory and every
scrape. Each family keeps at most :data:`MAX_SERIES` label sets of its own; calls past
that are counted under :data:`OTHER`, so totals stay whole. A model is a label of its own
once a server answered a call to it (at most :data:`MAX_SERIES` of them); until then, as
for a made-up name that is refused or not found, its calls count as :data:`OTHER`: where
keys decide the tenant and department, such names took every series before a model
pulled later had its first call. The ledger keeps every name as sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values as prometheus_values,
)

from ollama_meter.gateway._series import Observed, Unlocked, add, made, value_class
from ollama_meter.meter import Meter, SpanRecord, Status
from ollama_meter.records import counted_model
from ollama_meter.telemetry._semconv import (
    DURATION_BUCKETS,
    OPERATION_NAMES,
    PROVIDER_OLLAMA,
    TOKEN_BUCKETS,
    input_only,
)
from ollama_meter.telemetry._served import OTHER, Served

_WHO = ("tenant", "department", "model")
_GENAI = ("gen_ai_operation_name", "gen_ai_request_model", "error_type", "gen_ai_provider_name")
"""The GenAI histograms' labels: the conventions require the operation and the provider."""

MAX_SERIES = 1000
"""Distinct (tenant, department, model) and (operation, model, error type) label sets counted apart."""

log = logging.getLogger("ollama_meter.gateway")

# prometheus_client keeps every value in files of PROMETHEUS_MULTIPROC_DIR when that is set
# (its mode for a pre-fork server's workers, chosen once at its import): a gateway started with
# it pointing nowhere failed with a traceback, and with a folder a second gateway in a process
# started from the first one's counts, a restart with the same process id (a container's
# pid 1) from the last run's. These counts are this process's own, kept in its memory.
# The gateway's own series take no lock of their own, and a call is counted by adding to
# their values (``_series``): a call's counting changed fourteen values, each under its own
# lock, each through four calls of prometheus_client's.
_OWN = frozenset({
    "ometer_requests", "ometer_errors", "ometer_tokens", "ometer_cost_micros",
    "ometer_unpriced_requests", "ometer_requests_in_flight",
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_operation_time_to_first_chunk_seconds", "ometer_queue_duration_seconds",
    "gen_ai_client_token_usage",
})  # fmt: skip
"""The names of :class:`GatewayMetrics`' instruments."""


prometheus_values.ValueClass = value_class(_OWN)


class _Bounded:
    """Label sets as they come, up to ``limit`` distinct ones; then :data:`OTHER` for new ones."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.known: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels in self.known:  # the common case, without the lock: sets only grow
            return labels
        with self._lock:  # spans are observed from several threads: the limit holds exactly
            return self._admit(labels)

    def _admit(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels in self.known:
            return labels
        if len(self.known) < self.limit:
            self.known.add(labels)
            return labels
        if len(self.known) == self.limit:
            self.known.add((OTHER,) * len(labels))
            log.warning(
                "/metrics: more than %d %s label sets; further ones are counted as %r",
                self.limit,
                self.name,
                OTHER,
            )
        return (OTHER,) * len(labels)


class GatewayMetrics:
    """A :class:`~ollama_meter.meter.SpanObserver` that counts every call this process meters."""

    leaves_spans = True  # reads them only (``_observers.may_change_spans``)
    counts_only = True  # never reads what a request asked (``_observers.reads_requests``)

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._who = _Bounded("tenant/department/model", max_series)
        self._genai = _Bounded("operation/model/error type", max_series)
        self._served = Served(max_series)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ometer_requests", "Metered calls, by status.", [*_WHO, "status"], registry=r
        )
        self.errors = Counter(
            "ometer_errors", "Calls that failed, by error type.", [*_WHO, "error_type"], registry=r
        )
        self.tokens = Counter("ometer_tokens", "Tokens used.", [*_WHO, "type"], registry=r)
        self.cost = Counter(
            "ometer_cost_micros",
            "Cost in millionths of the currency.",
            [*_WHO, "currency"],
            registry=r,
        )
        self.unpriced = Counter(
            "ometer_unpriced_requests",
            "Calls with usage that no price rule covered (their cost is counted as 0).",
            _WHO,
            registry=r,
        )
        self.in_flight = Gauge(
            "ometer_requests_in_flight", "Calls being metered right now.", registry=r
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, as the caller saw it.",
            _GENAI,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first streamed chunk.",
            _GENAI,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "ometer_queue_duration_seconds",
            "Time calls waited in this gateway for a free slot on a server.",
            ["tenant", "department"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per call, input and output.",
            [*_GENAI, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )

        self._open: set[str] = set()
        self._children: dict[tuple[object, tuple[object, ...]], Any] = {}
        self._counted: dict[tuple[tuple[str, ...], str, str], tuple[Unlocked, ...]] = {}
        self._pending: list[SpanRecord] = []
        self._counting: asyncio.AbstractEventLoop | None = None  # the loop told to count them
        self._pending_lock = threading.Lock()
        self._lock = threading.Lock()
        """Held while the series change or are read (their values take no lock of their own)."""

    def _of(self, family: Any, *labels: object) -> Any:
        """The values of ``family.labels(*labels)``, found once per label set (as bounded as
        the series): a counter's one value, a histogram's :class:`~._series.Observed`."""
        key = (family, labels)
        values = self._children.get(key)
        if values is None:
            _, made_with = made(lambda: family.labels(*labels))
            values = Observed(made_with) if isinstance(family, Histogram) else made_with[0]
            self._children[key] = values
        return values

    def on_start(self, span: SpanRecord) -> None:
        with self._lock:
            self._open.add(span.id)
            self.in_flight.inc()

    def on_end(self, span: SpanRecord) -> None:
        """Count ``span``: on an event loop just after the task that ended the call lets go
        (its answer's last byte written by then: counting took 20 us of each call's answer,
        on this project's machine); elsewhere at once. A scrape counts what waits first."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._count(span)
            return
        with self._pending_lock:
            self._pending.append(span)
            if self._counting is loop:  # told already (a loop closed since is told again)
                return
            self._counting = loop
        loop.call_soon(self._count_pending)

    def _count_pending(self) -> None:
        with self._pending_lock:
            spans, self._pending, self._counting = self._pending, [], None
        for span in spans:
            self._count(span)

    def _count(self, span: SpanRecord) -> None:
        with self._lock:
            self._count_held(span)

    def _count_held(self, span: SpanRecord) -> None:
        # A refusal ends without having started: the gauge follows only calls that did.
        if span.id in self._open:
            self._open.discard(span.id)
            self.in_flight.dec()
        served = self._served.label
        # One model, one series, whatever its spelling (reports count it so: ``counted_model``).
        who = self._who((span.tenant, span.department, served(span, counted_model(span.model))))
        counted = self._counted.get(key := (who, span.status, span.currency))
        if counted is None:  # a call's four counters, found once per label set (as bounded)
            counted = self._counted[key] = (
                self._of(self.requests, *who, span.status),
                self._of(self.tokens, *who, "input"),
                self._of(self.tokens, *who, "output"),
                self._of(self.cost, *who, span.currency),
            )
        requests, tokens_in, tokens_out, cost = counted
        requests.amount += 1
        if span.status == Status.ERROR:
            self._of(self.errors, *who, span.error_type or "unknown").amount += 1
        add(tokens_in, span.input_tokens)
        add(tokens_out, span.output_tokens)
        add(cost, span.cost_total)
        if span.unpriced_usage:
            self._of(self.unpriced, *who).amount += 1
        named = (
            OPERATION_NAMES.get(span.operation, span.operation),
            served(span, span.request_model),
            span.error_type or "",
        )
        genai = (*self._genai(named), PROVIDER_OLLAMA)  # one provider: no series of its own
        if span.latency_ns is not None:
            self._of(self.duration, *genai).observe(span.latency_ns / 1e9)
        if span.ttft_ns is not None:
            self._of(self.first_chunk, *genai).observe(span.ttft_ns / 1e9)
        if span.queue_ns is not None:
            self._of(self.queue, *who[:2]).observe(span.queue_ns / 1e9)
        if span.status == Status.OK:
            self._of(self.token_usage, *genai, "input").observe(span.input_tokens)
            if not input_only(span.operation):  # an embedding has input tokens only
                self._of(self.token_usage, *genai, "output").observe(span.output_tokens)

    def text(self) -> str:
        self._count_pending()
        with self._lock:
            return generate_latest(self.registry).decode()


def install(meter: Meter) -> GatewayMetrics:
    """The meter's metrics observer, added on first use (once per meter)."""
    for observer in meter.observers:
        if isinstance(observer, GatewayMetrics):
            return observer
    metrics = GatewayMetrics()
    meter.observers.append(metrics)
    return metrics
