"""The ``ollama`` async clients of one upstream, one per event loop, and their closing from
any thread.

A client's connections belong to the loop they were opened on: once that loop is gone
(``asyncio.run`` per call), reusing them fails as if Ollama had. So each loop has its own
client, also while several run at once (a loop per thread), and it goes with its loop.

Closing runs on one loop, maybe another thread's than the one the calls ran on (a worker's
loop, closed by the main thread's shutdown). Its own loop's client is closed there; every
other loop's has its connections shut down at once (a socket's shutdown is safe from any
thread, and wakes the loop reading it: Ollama sees its caller leave), and is closed on its own
loop while that runs. Before, only the closing loop's client was closed: a worker loop's
connections stayed open at Ollama until the process ended. The clients of the calls that run
no model (``_managing.py``) are on the same transport, and closed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

import ollama

from ollama_meter.upstream._sdk_kept import AsyncKeptTransport

Made = dict[str, Any]
"""An ``ollama.AsyncClient``'s arguments but its host (``_sdk_made.client_arguments``)."""


class LoopClients:
    """One ``ollama.AsyncClient`` per event loop; thread-safe."""

    def __init__(self, host: str, arguments: Callable[[], Made]) -> None:
        self._host, self._arguments = host, arguments
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[ollama.AsyncClient, list[AsyncKeptTransport]]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def running(self) -> ollama.AsyncClient:
        """The client of the running event loop, made on its first call."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._clients.get(loop)
            if held is None:
                # A client holds its loop (its connections do): those of closed loops go here.
                for gone in [old for old in self._clients if old.is_closed()]:
                    _cut(self._clients.pop(gone)[1])
                made = self._arguments()
                client = ollama.AsyncClient(host=self._host, **made)
                held = self._clients[loop] = (client, _transports(made))
            return held[0]

    async def aclose(self) -> None:
        """Close every loop's client: the running loop's here, the others' as the module says."""
        here = asyncio.get_running_loop()
        with self._lock:
            held, self._clients = dict(self._clients), weakref.WeakKeyDictionary()
        for loop, (client, transports) in held.items():
            if loop is here:
                await client.close()  # type: ignore[no-untyped-call]
                continue
            _cut(transports)
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: nothing runs it
                loop.call_soon_threadsafe(_close_here, client)


_CLOSING: set[asyncio.Task[None]] = set()
"""Closings of other loops' clients, held until done (a loop holds its tasks weakly)."""


def _close_here(client: ollama.AsyncClient) -> None:
    closing = asyncio.ensure_future(client.close())  # type: ignore[no-untyped-call]
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)


def _transports(made: Made) -> list[AsyncKeptTransport]:
    """The transports of a client made of ``made``: its own, and those of its proxies."""
    every = [made.get("transport"), *(made.get("mounts") or {}).values()]
    return [t for t in every if isinstance(t, AsyncKeptTransport)]


def _cut(transports: list[AsyncKeptTransport]) -> None:
    for transport in transports:
        transport.cut()
