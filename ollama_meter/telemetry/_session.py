"""The HTTP session the OTLP/HTTP exporters send with: an answer is read within bounds.

``requests`` reads a whole answer into memory, and its timeout bounds each read of the
socket, not the answer: a collector (or a proxy in its place) that answers an endless or
trickling body kept the export thread reading forever, in gigabytes, and every span after
it waited in the queue and was dropped without a word. An OTLP answer is an empty message
or a short ``partial_success``: :data:`MAX_ANSWER` bytes, read before the request's own
timeout runs out, or the connection is dropped and the export fails like any other. A
redirect fails it too (:class:`Redirected`), and so does a success that is a web page
(:class:`NotOtlp`). Imported only when an OTLP/HTTP exporter is made.

The timeout bounds the whole exchange, not each read: a collector that trickled its status
line or headers a byte at a time (each read within the timeout) held the export thread for
minutes, before any body was read, and the spans behind it waited without a word. A watchdog
(:class:`_Cut`) shuts the exchange's socket when the timeout is up, whatever it is waiting on.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ollama_meter._text import one_line
from ollama_meter.records import storable_text
from ollama_meter.telemetry._size import MAX_ANSWER
from ollama_meter.telemetry._timeouts import MAX_WAIT
from ollama_meter.telemetry._tls import tls_spoken, trouble_of

_CHUNK = 8 * 1024
MAX_REASON = 200
"""Characters of a collector's reason for refusing spans said in the log."""
_PLAIN = frozenset(
    {"accept", "accept-encoding", "connection", "content-encoding", "content-length"}
    | {"content-type", "host", "transfer-encoding", "user-agent"}
)


class AnswerOutOfBounds(requests.RequestException):
    """A collector's answer went past :data:`MAX_ANSWER` bytes or past the request's timeout.

    Not a connection error, so the exporter does not send the batch again to get the same."""


class Redirected(requests.RequestException):
    """A collector answered a redirect: the SDK's exporter counts any 3xx as delivered, and
    follows none, so the spans were lost while every export 'succeeded'."""


class NotOtlp(requests.RequestException):
    """A collector answered success with a web page: a proxy's sign-in page in front of it, or
    a web application at a wrong endpoint. Every export "succeeded" and none got there."""


class _Cut:
    """Shuts, from a timer's thread, the sockets one exchange used: a read or write waiting on
    them returns at once. Connections register as they connect or send (a kept-alive one
    sends on the socket it has), on the thread making the request."""

    current = threading.local()

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.done = False
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self.sockets.append(sock)
            if self.done:  # connected after the time was up: nothing is sent on it
                _shut(sock)

    def __call__(self) -> None:
        with self._lock:
            self.done = True
            for sock in self.sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched(sock: socket.socket | None) -> None:
    cut: _Cut | None = getattr(_Cut.current, "cut", None)
    if cut is not None:
        cut.watch(sock)


class _CutHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watched(sock)  # before a TLS handshake, which a collector could trickle as well
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self.sock)  # a kept-alive connection: it made no new socket
        super().request(*args, **kwargs)


class _CutHTTPSConnection(_CutHTTPConnection, HTTPSConnection):
    pass


class _CutHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CutHTTPConnection


class _CutHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CutHTTPSConnection


_POOLS = {"http": _CutHTTPPool, "https": _CutHTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter, its connections (direct or through an HTTP proxy) cut by :class:`_Cut`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connection classes of its own
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class BoundedSession(requests.Session):
    """``keep``: for a place that is not the collector (Langfuse, Traceloop), the only headers
    it is sent besides plain HTTP ones. The SDK's exporter adds the environment's
    ``OTEL_EXPORTER_OTLP_HEADERS`` (or ``_TRACES_HEADERS``) to any endpoint it is given, and
    the collector's key is nothing a third party's server should get."""

    def __init__(self, keep: Iterable[str] | None = None) -> None:
        super().__init__()
        self._mount_cut()
        self.keep = None if keep is None else _PLAIN | {name.lower() for name in keep}
        self.last = b""
        """The body of the last answer (an exporter sends one request at a time)."""
        self.status: int | str = 0
        """The status of the last answer (0: none came), or the TLS mismatch that had none
        (``_tls.Trouble``)."""
        self.refusal = "413"
        """How the place says an export is too large, for the log."""
        self.wait: float | None = None
        """Seconds the last answer asked to wait (``Retry-After``), when longer than the export
        had left: the exporter gave up at once, and the wait is ometer's to honour."""
        self._pid = os.getpid()

    @property
    def too_large(self) -> bool:
        return self.status == 413

    def _mount_cut(self) -> None:
        # Mounted anew, not closed: in a forked child the parent still uses its connections.
        self.mount("https://", _Adapter())
        self.mount("http://", _Adapter())

    def _own_connections(self) -> None:
        """In a forked child, connections of its own: the kept-alive ones are the parent's,
        and requests of both processes on one socket read each other's answers."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._mount_cut()  # the old ones dropped, not closed: the parent still uses them

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self._own_connections()
        if self.keep is not None:
            for name in [name for name in request.headers if name.lower() not in self.keep]:
                del request.headers[name]
        return super().send(request, **kwargs)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        timeout = kwargs.get("timeout")
        deadline = time.monotonic() + timeout if isinstance(timeout, int | float) else None
        kwargs["stream"] = True
        cut = _Cut()
        watchdog = None
        if isinstance(timeout, int | float):
            watchdog = threading.Timer(max(0.0, timeout), cut)
        _Cut.current.cut = cut
        try:
            if watchdog is not None:
                watchdog.daemon = True
                watchdog.start()
            response = super().request(method, url, *args, **kwargs)
            body = self._read(response, deadline, timeout)
            if cut.done:  # the socket was shut under the last read: the answer may be short
                raise AnswerOutOfBounds(f"no whole answer within {timeout} s")
        except Exception as exc:
            self.status = trouble_of(exc) or self.status
            if cut.done and not isinstance(exc, AnswerOutOfBounds):
                # Not a connection error: the exporter would send the batch again at once.
                raise AnswerOutOfBounds(f"no whole answer within {timeout} s") from None
            raise
        finally:
            _Cut.current.cut = None
            if watchdog is not None:
                watchdog.cancel()
        response._content = bytes(body)
        response._content_consumed = True  # read whole: urllib3 put the connection back
        self.last, self.status = response._content, response.status_code
        if response.status_code == 400 and url.lower().startswith("http:"):
            # Sent in plain HTTP: from a place that speaks TLS? (Over https:// it is not.)
            self.status = tls_spoken(self.last) or self.status
        self.wait = None
        if response.status_code in THROTTLING and deadline is not None:
            asked = retry_after(response.headers.get("retry-after"))
            if asked is not None and asked > deadline - time.monotonic():
                self.wait = asked
        if 300 <= response.status_code < 400:
            where = response.headers.get("location") or "nowhere said"
            raise Redirected(f"answered {response.status_code} to {where}: set the endpoint to it")
        kind = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
        if response.ok and kind == "text/html":  # no OTLP receiver answers one
            raise NotOtlp(f"answered {response.status_code} with a web page, not OTLP")
        return response

    @staticmethod
    def _read(response: requests.Response, deadline: float | None, timeout: Any) -> bytearray:
        body = bytearray()
        try:
            for chunk in _parts(response):
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise AnswerOutOfBounds(f"answer longer than {MAX_ANSWER} bytes")
                if deadline is not None and time.monotonic() > deadline:
                    raise AnswerOutOfBounds(f"answer not over within {timeout} s")
        except BaseException:
            response.close()  # the connection is not reused: the rest of the answer is on it
            raise
        return body


def _parts(response: requests.Response) -> Iterable[bytes]:
    """The answer's body as it arrives: each part as soon as the socket gave any bytes.

    ``iter_content`` reads whole chunks of a body whose length is said: a read of 8 KiB
    waited for 8 KiB (a byte every few seconds, each within the timeout, held it for hours),
    and the deadline was looked at only between them. ``read1`` returns what one read of
    the socket gave (urllib3 2.3 and later)."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None or raw.chunked:  # a chunked body comes a chunk at a time anyway
        yield from response.iter_content(_CHUNK)
        return
    while chunk := read1(_CHUNK, decode_content=True):
        yield chunk


def refused(answer: bytes, what: str) -> tuple[int, str]:
    """The spans (``what``: ``spans``), or metric points, a collector's answer to a successful
    export says it refused, and why.

    OTLP says a collector that keeps part of an export answers 200 with ``partial_success``
    (a count and a message); the SDK's exporters read no answer, so those were lost without a
    word. An answer that is not OTLP says nothing refused."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    kind = ExportTraceServiceResponse if what == "spans" else ExportMetricsServiceResponse
    try:
        partial = kind.FromString(answer).partial_success
    except DecodeError:
        return 0, ""
    # The reason goes into a log line: one line, short, nothing a terminal acts on.
    why = storable_text(one_line(storable_text(partial.error_message, MAX_REASON)), MAX_REASON)
    count = partial.rejected_spans if what == "spans" else partial.rejected_data_points
    return max(0, count), why


THROTTLING = frozenset({429, 502, 503, 504})
"""The answers OTLP/HTTP (and the SDK) try again after, a ``Retry-After`` saying when."""


def retry_after(header: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110: seconds, or an HTTP date), at
    most :data:`MAX_WAIT`; None for none, or one that is neither."""
    said = (header or "").strip()
    if said.isascii() and said.isdigit():
        return min(float(said), MAX_WAIT)
    with contextlib.suppress(ValueError):  # the SDK reads "2.5" too: so does ometer
        seconds = float(said)
        if math.isfinite(seconds) and seconds >= 0 and said[:1].isdigit():
            return min(seconds, MAX_WAIT)
        return None
    try:
        when = parsedate_to_datetime(said)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    left = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(left, 0.0), MAX_WAIT)
