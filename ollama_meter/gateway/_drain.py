"""Stopping the gateway (SIGTERM: systemd stop or restart) while calls run and wait.

On the signal the server stops listening and lets every call it has finish for
``drain_s`` seconds, the calls waiting in the queue included (they are served as
slots free). When the drain ends, what still runs is stopped by the gateway itself,
each call with a clear answer in its route's format, not the server's plain-text
``500`` and a traceback per call: a call not yet answered gets 503 with
``Retry-After: 1`` (a restarted gateway takes it), a stream already flowing ends
with an error item, so the official clients raise. Each call's span is written
(as a caller's stop: ``client_abort``) before the process exits.

Owns the drain's timing and those last answers; never what a call does before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_meter.upstream import wire_of_path

log = logging.getLogger("ollama_meter.gateway")

DRAIN_S = 10.0
"""Seconds the calls in flight at a SIGTERM have to finish (``OMETER_DRAIN_TIMEOUT``)."""
FINISH_S = 5.0
"""Seconds more for the calls stopped when the drain ends to write their spans and answer."""
STOPPED = "the gateway stopped before this call was answered; send it again"
CLEAN_STOPS = frozenset({signal.SIGTERM, signal.SIGHUP})
"""Signals that ask the gateway to stop: once it has, it exits 0."""


class Drain:
    """Whether the drain has ended, and how many calls are not yet answered: shared by the
    server (which ends it) and the app (which counts)."""

    def __init__(self) -> None:
        self.over = False
        self.unanswered = 0
        """Calls whose answer has not all been sent. Not the server's tasks: a call's task
        runs on a moment after its last byte is sent (and its caller may be gone by then), so
        counting tasks told ``ometer run``'s user a finished call was left running."""


class Drained:
    """ASGI middleware: a call the drain's end stopped is answered, not left to the server."""

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "ended": False}
        drain = self.drain

        def answered() -> None:
            if not state["ended"]:
                state["ended"] = True
                drain.unanswered -= 1

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered()  # before the send: the caller may have it all before it returns
            await send(message)

        drain.unanswered += 1
        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            if not self.drain.over or state["ended"]:
                raise
            with contextlib.suppress(Exception):  # the caller may be gone too
                await _last_answer(scope["path"], send, started=state["started"])
        finally:  # with no answer sent (a hang-up, an error the server answers): over too
            answered()


async def _last_answer(path: str, send: Send, *, started: bool) -> None:
    wire = wire_of_path(path)
    if started:  # a stream: its last item says why it ends
        await send({"type": "http.response.body", "body": wire.error_frame(STOPPED)})
        await send({"type": "http.response.body", "body": b""})
        return
    body = wire.error_body(503, STOPPED)
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def drained(drain: Drain) -> Middleware:
    """The middleware as the app declares it (before every route, so each call is covered)."""
    return Middleware(Drained, drain=drain)


class GatewayServer(uvicorn.Server):
    """uvicorn's server, with the gateway's drain: ``drain_s`` for calls to finish, then the
    gateway stops the rest itself (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *, drain_s: float = DRAIN_S) -> None:
        config.timeout_graceful_shutdown = int(drain_s + FINISH_S) + 1
        super().__init__(config)
        self.drain_s = drain_s
        self._draining: tuple[asyncio.AbstractEventLoop, Drain] | None = None
        self._cut = False  # the drain ended at once (:meth:`cut_drain`)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, with SIGHUP taken as SIGTERM (unless ignored: nohup): a terminal gone (an
        ssh session dropped) killed the gateway on the spot, cutting every call in flight."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = [signal.SIGINT, signal.SIGTERM]
        for sig in (signal.SIGHUP, signal.SIGQUIT):
            if signal.getsignal(sig) != signal.SIG_IGN:
                handled.append(sig)
        before = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
        # A stop asked for (SIGTERM, SIGHUP) and carried out, every call answered and its span
        # written, is a clean end: the process goes on to exit 0. Raised again, it ended
        # ``sys.exit(143)`` (ometer's handler), which systemd, Kubernetes and Docker read as
        # the service failing. Ctrl-C still ends it as an interrupted command does (130), and
        # so does a forced end, whose calls were left to the journal (128 + the signal).
        for captured in reversed(self._captured_signals):
            if captured == signal.SIGQUIT:  # its default dumps core: of a process done
                raise SystemExit(128 + captured)
            if captured not in CLEAN_STOPS or self.force_exit:
                signal.raise_signal(captured)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first stop signal drains; a second (Ctrl-C twice, SIGTERM then Ctrl-C) ends the
        drain at once, as its end would: uvicorn's forced exit cancelled the calls under the
        server, a stream cut with no last line and two tracebacks logged. A third forces it.

        SIGQUIT (Ctrl-\\: quit now) is a first and a second at once: no drain. Its default
        killed the process on the spot, each stream cut with no last item and each call left
        to the next process as ``interrupted``, its output charged as nothing."""
        if self._cut:
            self._captured_signals.append(sig)
            self.force_exit = True
            return
        if self.should_exit or sig == signal.SIGQUIT:
            self._captured_signals.append(sig)  # the process still ends as the signal says
            self.cut_drain()
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    def cut_drain(self) -> None:
        """End the drain now, from any thread (``ometer run``'s Ctrl-C while it waits for what
        its program left running): each call still running is stopped as when the drain
        ends, with a clear last answer and its span written."""
        self.drain_s, self._cut = 0.0, True  # a drain not begun yet ends as it begins
        if (draining := self._draining) is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to stop
                draining[0].call_soon_threadsafe(self._end_drain, draining[1], "was cut short")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain: Drain | None = getattr(getattr(self.config.app, "state", None), "drain", None)
        loop = asyncio.get_running_loop()
        timer = None
        if drain is not None:
            self._draining = (loop, drain)
            how = "was cut short" if self._cut else f"ended after {self.drain_s:g} s"
            timer = loop.call_later(self.drain_s, self._end_drain, drain, how)
        try:
            await super().shutdown(sockets)
        finally:
            self._draining = None
            if timer is not None:
                timer.cancel()

    def unanswered(self) -> int:
        """Calls whose answer has not all been sent (readable from any thread)."""
        drain: Drain | None = getattr(getattr(self.config.app, "state", None), "drain", None)
        return len(self.server_state.tasks) if drain is None else drain.unanswered

    def _end_drain(self, drain: Drain, how: str) -> None:
        running = [task for task in self.server_state.tasks if not task.done()]
        if not running or drain.over:
            return
        drain.over = True
        if unanswered := drain.unanswered:  # the rest were answered and end on their own
            log.warning(
                "the drain %s: stopped %d call(s) still running; each is answered "
                "that the gateway stopped, and its span written",
                how,
                unanswered,
            )
        for task in running:
            task.cancel()
