"""Real OTLP receivers for the tests, and flat views of what they decoded.

``OtlpHttpReceiver`` (OTLP/HTTP, protobuf) and ``OtlpGrpcReceiver`` (OTLP/gRPC)
listen on 127.0.0.1 with a free port, decode every export with the
``opentelemetry-proto`` messages and keep it, so a test asserts on what an
exporter actually put on the wire rather than on what an SDK object held.
``spans`` and ``metric_points`` flatten the kept requests of either receiver
into plain values; ``wait_for`` polls until an (asynchronous) export arrived.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "SPAN_KIND_CLIENT",
    "EndlessCollector",
    "GrpcRequest",
    "HttpRequest",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "PointView",
    "SilentCollector",
    "SpanView",
    "any_value",
    "attributes",
    "metric_points",
    "spans",
    "wait_for",
]

T = TypeVar("T")

# opentelemetry.proto.trace.v1.Span.SpanKind; the one an Ollama call is.
SPAN_KIND_CLIENT = 3

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

ExportRequest = (
    trace_service_pb2.ExportTraceServiceRequest | metrics_service_pb2.ExportMetricsServiceRequest
)

# Path suffix -> (request type, empty response bytes). Matching on the suffix
# lets a prefixed ingestion path such as Langfuse's /api/public/otel/v1/traces in.
_HTTP_SIGNALS: dict[str, tuple[type[Message], bytes]] = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
    ),
}
_PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class HttpRequest:
    """One OTLP/HTTP export as received: ``status`` is what the receiver answered."""

    path: str
    headers: dict[str, str]
    message: ExportRequest
    status: int
    peer: tuple[str, int] = ("", 0)
    """The exporter's end of the connection it came on."""
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic``)."""


@dataclass(frozen=True)
class GrpcRequest:
    """One OTLP/gRPC export as received: ``method`` is the full gRPC method name."""

    method: str
    metadata: dict[str, str | bytes]
    message: ExportRequest
    code: grpc.StatusCode
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic``)."""


class _Receiver(Protocol):
    @property
    def requests(self) -> Sequence[HttpRequest | GrpcRequest]: ...


R = TypeVar("R", HttpRequest, GrpcRequest)


class _Recorder(Generic[R]):
    """The exports a receiver got, kept thread-safely in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[R] = []

    @property
    def requests(self) -> list[R]:
        """A snapshot of the exports received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: R) -> None:
        with self._lock:
            self._requests.append(request)


# ---------------------------------------------------------------- OTLP/HTTP


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    # HTTP/1.1 keeps the exporter's pooled connection alive; the timeout ends
    # the handler thread of an idle one instead of leaving it blocked forever.
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_POST(self) -> None:
        signal = next((s for s in _HTTP_SIGNALS if self.path.split("?")[0].endswith(s)), None)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if signal is None:
            self._answer(404, b"", "text/plain")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != _PROTOBUF:
            self._answer(415, b"only application/x-protobuf", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding != "identity":
                self._answer(415, f"unsupported encoding {encoding}".encode(), "text/plain")
                return
            request_type, empty_response = _HTTP_SIGNALS[signal]
            message = request_type.FromString(body)
        except (OSError, zlib.error, DecodeError) as exc:
            self._answer(400, str(exc).encode(), "text/plain")
            return
        receiver = self.server.receiver
        status = receiver.status
        if receiver.max_body is not None and length > receiver.max_body:
            status = 413  # a proxy's body limit in front of the collector (nginx: 1 MB)
        headers = {name.lower(): value for name, value in self.headers.items()}
        peer = (str(self.client_address[0]), int(self.client_address[1]))
        receiver._record(HttpRequest(self.path, headers, message, status, peer))
        receiver.answering.wait()  # a slow collector: recorded as received, answered later
        if 200 <= status < 300:
            self._answer(status, receiver.answer or empty_response, _PROTOBUF)
        else:
            self._answer(status, b"", "text/plain", receiver.retry_after)

    def _answer(
        self, status: int, body: bytes, content_type: str, retry_after: str | None = None
    ) -> None:
        self.send_response(status)
        if retry_after is not None:  # a throttling collector says when to come back
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the exporters retry on purpose; their requests would flood the test output


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpHttpReceiver


class OtlpHttpReceiver(_Recorder[HttpRequest]):
    """An OTLP/HTTP collector on 127.0.0.1 that keeps every decoded export.

    Accepts protobuf POSTs (optionally gzip or deflate) on any path ending in
    ``/v1/traces`` or ``/v1/metrics``. ``status`` is the answer to give, so a
    test can play a failing collector (and recover it by setting it back);
    rejected requests are recorded too, with the status they got. Clear ``answering`` to
    play a slow one: each export is recorded when it arrives and answered once it is set.
    ``answer``: the body of a 2xx answer instead of an empty response (a ``partial_success``).
    ``max_body``: bytes of a request past which it answers 413, as a proxy in front would.
    ``retry_after``: the ``Retry-After`` header of a failure's answer, if any.
    """

    def __init__(self, status: int = 200, max_body: int | None = None) -> None:
        super().__init__()
        self.status = status
        self.retry_after: str | None = None
        self.max_body = max_body
        self.answering = threading.Event()
        self.answering.set()
        self.answer: bytes | None = None
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OtlpHttpReceiver:
        self._server = _HttpServer(("127.0.0.1", 0), _HttpHandler)
        self._server.receiver = self
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-http-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.answering.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        """Base URL, without a signal path: append ``/v1/traces`` or ``/v1/metrics``."""
        if self._server is None:
            raise RuntimeError("OtlpHttpReceiver is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}"


class SilentCollector:
    """A collector that accepts every connection and never answers: a hung or overloaded one.

    ``url`` takes OTLP/HTTP exports (``/v1/traces`` under it); ``connections`` counts the
    connections accepted, which an exporter opens anew after each timed-out request.
    ``answer``: bytes to send at once and hang up (a lying server) instead of silence.
    :meth:`hang_up` ends the silence: the clients waiting are told at once that no answer
    comes, and do not wait out their timeouts.
    """

    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer
        self._hung_up = False
        self.accepted_at: list[float] = []  # time.monotonic() of each connection accepted
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SilentCollector:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._thread = threading.Thread(target=self._accept, name="otlp-silent", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._held.append(conn)
            self.accepted_at.append(time.monotonic())
            if self.answer or self._hung_up:
                with contextlib.suppress(OSError):
                    conn.sendall(self.answer)
                conn.close()

    def hang_up(self) -> None:
        """Close every connection held, unanswered, and each accepted from now on."""
        self._hung_up = True  # before the look at those held: one accepted meanwhile sees it
        for conn in list(self._held):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
        for conn in self._held:
            conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def connections(self) -> int:
        return len(self._held)

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("SilentCollector is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"


class EndlessCollector:
    """A collector (or a proxy in its place) whose answer never ends: a 200 and then a body.

    Each connection gets ``200 OK`` with a chunked body of ``chunk`` repeated, ``pause``
    seconds apart, until ``limit`` bytes are sent (then the body ends properly); with
    ``length``, the body's length is said up front (``Content-Length``) and it is not chunked.
    ``head_pause``: the status line and headers go a byte at a time, that many seconds apart.
    ``cut_short`` counts the answers the client hung up on before their end, ``sent_whole``
    those that ended; ``connections`` the connections accepted.
    """

    def __init__(
        self,
        chunk: bytes,
        *,
        limit: int,
        pause: float = 0.0,
        length: bool = False,
        head_pause: float = 0.0,
    ) -> None:
        self.chunk, self.limit, self.pause, self.length = chunk, limit, pause, length
        self.head_pause = head_pause
        self.connections = 0
        self.cut_short = 0
        self.sent_whole = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> EndlessCollector:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        threading.Thread(target=self._accept, name="otlp-endless", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        framed = self.chunk if self.length else b"%x\r\n%s\r\n" % (len(self.chunk), self.chunk)
        whole = -(-self.limit // len(self.chunk)) * len(self.chunk)
        framing = b"Content-Length: %d" % whole if self.length else b"Transfer-Encoding: chunked"
        sent = 0
        with conn:
            try:
                conn.recv(1 << 20)  # the request (its start is enough to answer it)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" + framing + b"\r\n\r\n"
                for part in (
                    [head[i : i + 1] for i in range(len(head))] if self.head_pause else [head]
                ):
                    conn.sendall(part)
                    time.sleep(self.head_pause)
                while sent < self.limit:
                    conn.sendall(framed)
                    sent += len(self.chunk)
                    if self.pause:
                        time.sleep(self.pause)
                if not self.length:
                    conn.sendall(b"0\r\n\r\n")
            except OSError:  # the client hung up
                with self._lock:
                    self.cut_short += 1
                return
            with self._lock:
                self.sent_whole += 1

    def over(self) -> tuple[int, int] | None:
        """``(cut_short, sent_whole)`` once every answer begun is over, else None."""
        with self._lock:
            if self.cut_short + self.sent_whole < self.connections:
                return None
            return self.cut_short, self.sent_whole

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("EndlessCollector is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"


# ---------------------------------------------------------------- OTLP/gRPC


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._handle(TRACE_METHOD, request, context)
        answer = self._receiver.answer
        if isinstance(answer, trace_service_pb2.ExportTraceServiceResponse):
            return answer
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._handle(METRICS_METHOD, request, context)
        answer = self._receiver.answer
        if isinstance(answer, metrics_service_pb2.ExportMetricsServiceResponse):
            return answer
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpGrpcReceiver(_Recorder[GrpcRequest]):
    """An OTLP/gRPC collector (insecure) on 127.0.0.1 that keeps every decoded export.

    ``code`` is the status to answer with; anything but OK plays a failing
    collector. Rejected requests are recorded too, with the code they got.
    ``max_receive``: bytes of a request past which gRPC itself refuses it with
    RESOURCE_EXHAUSTED, unrecorded (a collector's ``max_recv_msg_size_mib``; 4 MiB unset).
    ``answer``: the response to a successful export of its signal instead of an empty one
    (a ``partial_success``). ``retry_after``: seconds a failure's RetryInfo says to wait.
    ``answering``: called as each export is answered, before its answer is sent.
    """

    def __init__(
        self, code: grpc.StatusCode = grpc.StatusCode.OK, max_receive: int | None = None
    ) -> None:
        super().__init__()
        self.code = code
        self.max_receive = max_receive
        self.answer: Message | None = None
        self.retry_after: float | None = None
        self.answering: Callable[[], None] | None = None
        self._server: grpc.Server | None = None
        self._port: int | None = None

    def __enter__(self) -> OtlpGrpcReceiver:
        options = (
            []
            if self.max_receive is None
            else [("grpc.max_receive_message_length", self.max_receive)]
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), server)
        self._port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(timeout=5)
        self._server = self._port = None

    @property
    def endpoint(self) -> str:
        """What the gRPC exporters take as ``endpoint`` (with ``insecure=True``)."""
        if self._port is None:
            raise RuntimeError("OtlpGrpcReceiver is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._port}"

    def _handle(self, method: str, message: ExportRequest, context: grpc.ServicerContext) -> None:
        code = self.code
        metadata = {item.key: item.value for item in context.invocation_metadata()}
        self._record(GrpcRequest(method, metadata, message, code))
        if self.answering is not None:
            self.answering()
        if code is not grpc.StatusCode.OK:
            if self.retry_after is not None:  # a throttling collector says when to come back
                delay = Duration(
                    seconds=int(self.retry_after), nanos=int(self.retry_after % 1 * 1e9)
                )
                info = RetryInfo(retry_delay=delay).SerializeToString()
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info),))
            context.abort(code, "simulated collector failure")  # raises


# ---------------------------------------------------------------- flat views


@dataclass(frozen=True)
class SpanView:
    """One exported span, in plain values; ids are lower-case hex."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict[str, Any]
    scope_name: str


@dataclass(frozen=True)
class PointView:
    """One exported data point: ``value`` for sums and gauges, the rest for histograms."""

    kind: Literal["sum", "gauge", "histogram"]
    attributes: dict[str, Any]
    value: int | float | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] | None = None
    explicit_bounds: tuple[float, ...] | None = None


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as Python: arrays become tuples, kvlists dicts, unset None."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, which)


def attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    """OTLP attributes (repeated ``KeyValue``) as a dict of Python values."""
    return {pair.key: any_value(pair.value) for pair in pairs}


def _messages(receiver: _Receiver, kind: type[T]) -> Iterator[T]:
    for request in receiver.requests:
        if isinstance(request.message, kind):
            yield request.message


def spans(receiver: _Receiver) -> list[SpanView]:
    """Every span in every trace export the receiver got, in arrival order."""
    found: list[SpanView] = []
    for message in _messages(receiver, trace_service_pb2.ExportTraceServiceRequest):
        for resource_spans in message.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        SpanView(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=attributes(span.attributes),
                            status_code=span.status.code,
                            status_message=span.status.message,
                            resource=resource,
                            scope_name=scope_spans.scope.name,
                        )
                    )
    return found


def metric_points(receiver: _Receiver) -> dict[str, list[PointView]]:
    """Data points by metric name, over every metrics export in arrival order.

    Cumulative metrics repeat in each export, so a test that flushed twice sees
    a point per flush; take the last one for the current total.
    """
    found: dict[str, list[PointView]] = {}
    for message in _messages(receiver, metrics_service_pb2.ExportMetricsServiceRequest):
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found.setdefault(metric.name, []).extend(_points(metric))
    return found


def _points(metric: Any) -> list[PointView]:
    data = metric.WhichOneof("data")
    if data in ("sum", "gauge"):
        points = []
        for point in getattr(metric, data).data_points:
            which = point.WhichOneof("value")  # as_int or as_double
            value = getattr(point, which) if which else None
            points.append(
                PointView(kind=data, attributes=attributes(point.attributes), value=value)
            )
        return points
    if data == "histogram":
        return [
            PointView(
                kind="histogram",
                attributes=attributes(point.attributes),
                count=point.count,
                sum=point.sum if point.HasField("sum") else None,
                bucket_counts=tuple(point.bucket_counts),
                explicit_bounds=tuple(point.explicit_bounds),
            )
            for point in metric.histogram.data_points
        ]
    # Exponential histograms and summaries are not produced by anything under test.
    raise ValueError(f"metric {metric.name!r}: unsupported data {data!r}")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    what: str | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError after ``timeout`` seconds, naming what was awaited
    and the last value seen, so a missing export reads as a test failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            label = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {label}; last value: {result!r}"
            )
        time.sleep(interval)
