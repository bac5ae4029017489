"""The gateway's HTTP server: uvicorn on httptools, with limits the app alone cannot set.

What has to happen where the bytes are parsed, before the app sees a request:

- **Header size.** A request whose request line and headers pass ``max_header_bytes`` is
  answered 431 and the connection closed, counted as the bytes arrive (50 MB never held).
- **A log no caller can flood.** uvicorn's warnings about requests it cannot parse are a line
  per message every 10 s at most; an upgrade offered (h2c) is read on as HTTP/1.1 (_upgrade).
- **Room for the calls it takes.** Each connection holds a file descriptor, and so does
  each call it sends on to Ollama, each ledger and spool file. Past ``max_connections``
  (half of what the open-file limit leaves after a reserve), the connection that has waited
  longest on its caller (silent, a head or body trickling in, idle) is let go for the new
  one; with none waiting, the new one is answered 503 and closed at once. So a flood of
  idle connections can neither leave a call unable to reach Ollama (which read as Ollama
  being down and opened its breaker) nor shut other callers out (``_connections.py``).
  The soft open-file limit is raised to the hard one first.
- **No connection held by a head that never ends.** A connection's request line and
  headers must arrive within ``HEAD_S`` of the connection (or of the request's first byte,
  on a kept-alive one): else 408, or, when nothing was sent, the connection is just closed
  (a client that opened it ahead of need must not read a 408 as its request's answer).
  Otherwise anyone could take every connection the process has with a header sent a byte a
  minute (a body is bounded in the same way by the app: ``_memory.BODY_S``).
- **No caller holds a slot by not reading.** A caller that asks for an answer and stops
  reading it (its TCP window full) would hold its call, the call's slot on Ollama and
  Ollama's work for as long as it liked: a few such callers starve everyone. A connection
  whose caller has taken no byte of what is waiting for it in ``STALLED_S`` is hung up on;
  its call ends as ``client_abort``, its span written, its slot handed to the next caller.
  A slow reader that is reading is never cut: what the kernel holds for it unacknowledged
  counts too (Linux). (Ollama itself waits for ever.)
- **A bounded number of requests ahead.** uvicorn parses every request a read holds and
  queues those behind the one being answered: 256 KiB of small ones (14,000) held 18 MB,
  for a minute when the caller read no answer. Past ``PIPELINED`` queued, the rest is not
  read: those queued are answered, the last with ``connection: close`` (as any server may
  close a pipelining connection; its client sends the rest again on a new one).
- **Earlier answers first.** The server's own answers (400 for bytes it cannot parse, 408,
  431) went onto the connection at once: into an earlier request's stream, or ahead of an
  answer not yet begun (read as that one's). With a request still to be answered, nothing
  more is parsed; those parsed are answered in order, the last closing the connection. A
  body that cannot be parsed (a bad chunk size) is the app's to answer: 400, with a span.
- **No connection held by a body nobody reads.** An answer that starts before its request's
  body has ended (a refusal, a 404, a GET's body) closes the connection after it.
- **Attribution from headers only.** uvicorn appends chunked-body trailers to the headers
  the app reads, so an ``X-Ometer-Department`` trailer would move a call: dropped here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import weakref
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ollama_meter._logging import Throttled
from ollama_meter.gateway._connections import (
    _MOST_FILES,
    Waiting,
    connections_for,
    open_files_limit,
    peer_of,
    proxy_options,
)
from ollama_meter.gateway._cycle import BodyNews, hear_lost, watch
from ollama_meter.gateway._limits import MAX_HEADER_BYTES
from ollama_meter.gateway._upgrade import feed, offered
from ollama_meter.gateway._warnings import _ThrottledWarnings


class _TooManyAhead(Exception):
    """Raised inside a parser callback to stop parsing requests past :data:`PIPELINED`."""


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a request whose head is too large."""


_WAITING: weakref.WeakKeyDictionary[Any, Waiting[_GuardedHttpTools]] = weakref.WeakKeyDictionary()
"""Each server's connections waiting on their callers (its ``server_state``)."""
LET_GO = (
    "the gateway needed this connection for another caller: its request's headers had not "
    "all arrived; send them at once"
)

try:  # Linux: how much a socket's kernel buffer still holds for its peer
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
except ImportError:  # not on this platform
    _OUTQ = None

HEAD_S = 60.0
"""Seconds a request's line and headers may take to arrive."""
STALLED_S = 60.0
"""Seconds a caller may leave the answer waiting for it without taking a byte of it."""

PIPELINED = 32
"""Requests a connection may have queued behind the one being answered."""


def _kernel_unread(transport: Any) -> int:
    """Bytes the kernel holds unacknowledged on ``transport``'s socket (Linux's SIOCOUTQ);
    0 where it cannot tell."""
    sock = transport.get_extra_info("socket")
    if _OUTQ is None or sock is None:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)), sys.byteorder)
    except (OSError, ValueError):
        return 0


class _GuardedHttpTools(HttpToolsProtocol):
    max_header_bytes = MAX_HEADER_BYTES
    max_connections = connections_for(_MOST_FILES)
    _refusals = Throttled(logging.getLogger("ollama_meter.gateway"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _ThrottledWarnings(  # type: ignore[assignment]
            self.logger, quiet=lambda: self._too_many_ahead
        )
        self._in_head = True  # until a request's headers are complete
        self._began_now = False  # a request began in the read being parsed
        self._ended_now = False  # a request ended in it
        self._too_large = False
        self._too_many_ahead = False  # past PIPELINED: nothing more is read
        self._stopped = False  # bytes it cannot parse, or too late: nothing more is parsed
        self._body = BodyNews()  # of the request whose headers came last
        self._head_bytes = 0  # the request line and complete headers, exactly
        self._partial_bytes = 0  # whole reads while a header is still arriving
        self._trailer_bytes = 0
        self._stall: asyncio.TimerHandle | None = None  # while writes wait on the caller
        self._head_timer: asyncio.TimerHandle | None = None  # while a head is awaited
        self._heard = False  # a byte of the awaited head has arrived
        self._gone: asyncio.Future[None] = self.loop.create_future()  # when the connection is lost

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._waiting = _WAITING.setdefault(self.server_state, Waiting())
        self._peer = peer_of(self.client)
        if len(self.connections) > self.max_connections:
            held = self._waiting.longest(_GuardedHttpTools._waits_on_caller)
            if held is None:
                self._refuse_connection()
                return
            held._let_go()
        self._waiting.began(self, self._peer)
        self._await_head(heard=False)

    def _waits_on_caller(self) -> bool:
        """Whether this connection waits for its caller to send something (nothing is being
        answered on it): it may be let go for a new caller's."""
        if self.transport.is_closing() or self.pipeline or self.transport.get_write_buffer_size():
            return False  # closed, or answers still to send: its caller is being answered
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # silent, a head arriving, or idle
            return True
        return cycle.more_body and not cycle.response_started  # a body still arriving

    def _let_go(self) -> None:
        """Close this connection, which waits on its caller, for a new caller's. A head half
        sent is answered 503; a body half sent ends its call as the caller's hang-up."""
        more = self._refusals.more("let go")
        if more is not None:
            self._refusals.log.warning(
                "let a connection go that was waiting on its caller, for a new one: %d are "
                "open, the most this process takes%s",
                len(self.connections) - 1,
                more,
            )
        if self._in_head and self._heard:
            self._close_with(b"503 Service Unavailable", LET_GO)
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_rest()
        if not self.transport.is_closing():
            self._waiting.began(self, self._peer)  # idle, or the next request's head arriving

    def _await_head(self, *, heard: bool) -> None:
        self._end_head_wait()
        self._heard = heard
        self._head_timer = self.loop.call_later(HEAD_S, self._head_late)

    def _end_head_wait(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._heard:
            self.transport.close()
            return
        self._close_with(
            b"408 Request Timeout",
            f"the request's headers did not arrive within {HEAD_S:g} s; send them at once",
        )

    def _refuse_connection(self) -> None:
        """Answer a connection past :attr:`max_connections` 503 and close it, its descriptor
        freed at once; say so in the log (a line every 10 s at most)."""
        more = self._refusals.more("refused")
        if more is not None:
            self._refusals.log.warning(
                "refused a connection: %d are open, the most this process takes (its open-file "
                "limit allows %d); raise the limit (ulimit -n, systemd LimitNOFILE=) or have "
                "clients close idle connections%s",
                len(self.connections) - 1,
                self.max_connections,
                more,
            )
        self._close_with(
            b"503 Service Unavailable",
            "the gateway has as many connections open as it takes; retry shortly",
            b"retry-after: 1\r\n",
        )

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_stall(self._unread())

    def _unread(self) -> int:
        """Bytes sent the caller's way that it has not taken: the transport's, and the kernel's
        not yet acknowledged. The kernel takes more of the transport's only once much of its
        own buffer (megabytes) is free, so a caller reading a few KB a second left the
        transport's the same for many seconds, and was taken for one that read nothing."""
        return self.transport.get_write_buffer_size() + _kernel_unread(self.transport)

    def resume_writing(self) -> None:
        self._unwatch_stall()
        super().resume_writing()
        self._watch_rest()

    def _watch_rest(self) -> None:
        """A connection closed (idle, an answer that closes it, a refusal) with bytes still to
        send, below the mark that pauses writing, waits to send them on a caller that may read
        none of them: for ever. Watched as any wait on the caller (a closing connection takes
        no new request, so what waits can only go down)."""
        transport = self.transport
        if transport.get_write_buffer_size() and self._stall is None and transport.is_closing():
            self._watch_stall(self._unread())

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._watch_rest()

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.gone(self)
        self._unwatch_stall()
        self._end_head_wait()
        if not self._gone.done():
            self._gone.set_result(None)
        super().connection_lost(exc)
        hear_lost(self.cycle)

    def _watch_stall(self, waiting: int) -> None:
        self._unwatch_stall()
        self._stall = self.loop.call_later(STALLED_S, self._stalled, waiting)

    def _unwatch_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self, waiting: int) -> None:
        """Writes have waited on the caller ``STALLED_S``: if it took nothing of the ``waiting``
        bytes meanwhile (nothing more is written while they wait), it is hung up on."""
        self._stall = None
        if not self.transport.get_write_buffer_size():  # closing or not: a close waits on it
            return
        left = self._unread()
        if left < waiting:  # reading, however slowly
            self._watch_stall(left)
            return
        more = self._refusals.more("stalled")
        if more is not None:
            self._refusals.log.warning(
                "hung up on a caller that took no byte of its answer in %g s (%d bytes waiting "
                "for it); a call still going ends as client_abort%s",
                STALLED_S,
                left,
                more,
            )
        self.transport.abort()  # close() would wait for ever to send what is waiting

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._began_now = True, True
        self._head_bytes = self._partial_bytes = self._trailer_bytes = 0
        if self._head_timer is None:  # a kept-alive connection's next request
            self._await_head(heard=True)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)
            return
        # A trailer: never part of the request the app sees; bounded like headers.
        self._trailer_bytes += len(name) + len(value)
        if self._trailer_bytes > self.max_header_bytes:
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadTooLarge  # the parser stops; uvicorn calls send_400_response

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._end_head_wait()
        if len(self.pipeline) >= PIPELINED:
            self._too_many_ahead = True
            raise _TooManyAhead  # the parser stops; uvicorn calls send_400_response
        if self.parser.get_http_version() == "1.0":
            # RFC 9110 §10.1.1: ignored. A 1.0 client knows no interim answer: it read
            # uvicorn's "100 Continue" as its call's answer.
            self.expect_100_continue = False
        before = self.cycle
        super().on_headers_complete()
        self._waiting.began(self, self._peer)  # for its body, if it has one
        if self.cycle is not before:  # a request (not an upgrade): its answer is watched
            self._body = watch(self.cycle, self._gone)

    def on_message_complete(self) -> None:
        if not offered(self):  # else the parser stopped at an upgrade's head: its body comes next
            self._ended_now = True
            super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._too_many_ahead:
            return  # the connection closes after the answers queued
        if self._stopped:
            return  # read (to hear a hang-up) and dropped: it closes after its answers
        self._heard = self._heard or bool(data)
        self._began_now = self._ended_now = False
        feed(self, data)  # uvicorn's, an upgrade offered read on as HTTP/1.1 (_upgrade.py)
        if not self._in_head or self._too_large or (self._began_now and self._ended_now):
            return  # (a read that ended one request and began the next: its share is unknown)
        # A header still arriving: httptools holds it until it ends, so count the reads.
        self._partial_bytes += len(data)
        if self._partial_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._too_large = True
            self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        if self._too_many_ahead:
            self.cycle.keep_alive = False  # the last queued: its answer closes the connection
            self.flow.pause_reading()
        elif self._too_large:
            self._refuse_head()
        elif self._answering():
            self._stop_after_answers(
                "the request's body breaks HTTP/1.1's chunked encoding (a chunk size that is "
                "not hex, or a chunk that does not end where its size says) and cannot be "
                "read; send it with a Content-Length, or chunks as RFC 9112 frames them"
            )
        else:
            super().send_400_response(msg)

    def _answering(self) -> bool:
        """Whether a request on this connection is still to be answered: the server may not
        answer for itself then (its answer would come first, or into the middle of that one)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _stop_after_answers(self, broken: str) -> None:
        """Parse nothing more: the requests parsed are answered, the last one's answer closing
        the connection. If that request's own body is what could not be read, the app hears
        it as :class:`Unparsable` (``broken`` says why) and answers it."""
        self._stopped = True
        self._end_head_wait()
        self.cycle.keep_alive = False
        if self.cycle.more_body and self._body.broken is None:
            self._body.broken = broken
            self.cycle.message_event.set()  # a read waiting for more of it hears at once

    def _refuse_head(self) -> None:
        self._close_with(
            b"431 Request Header Fields Too Large",
            f"the request's headers are larger than {self.max_header_bytes} bytes; "
            "send less in headers (prompts go in the body)",
        )

    def _close_with(self, status: bytes, error: str, headers: bytes = b"") -> None:
        """Answer ``status`` with ``{"error": error}`` and close the connection; with a request
        on it still to be answered, that answer is the last (:meth:`_stop_after_answers`)."""
        if self._answering():
            self._stop_after_answers(error)
            return
        body = json.dumps({"error": error}).encode()
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: application/json; charset=utf-8\r\n"
            b"content-length: "
            + str(len(body)).encode()
            + b"\r\n"
            + headers
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()
        self._watch_rest()


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int | None = None,
    trusted_proxies: str = "",
    **options: Any,
) -> uvicorn.Config:
    """uvicorn's configuration for the gateway ``app``, with the guarded HTTP protocol.

    ``max_connections`` defaults to what this process's open-file limit (raised to the
    hard limit here) leaves room for: :func:`connections_for`. ``trusted_proxies``: whose
    ``X-Forwarded-*`` headers are believed (:func:`proxy_options`; none by default).
    """
    most = connections_for(open_files_limit()) if max_connections is None else max_connections
    protocol = type(
        "GatewayHttp",
        (_GuardedHttpTools,),
        {"max_header_bytes": max_header_bytes, "max_connections": most},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=options.pop("log_level", "warning"),
        access_log=options.pop("access_log", False),
        **proxy_options(trusted_proxies),  # type: ignore[arg-type]
        **options,
    )
