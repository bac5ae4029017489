"""The ``ollama`` clients' calls that run no model: ``list``, ``show``, ``ps``, ``pull``, ``push``,
``create``, ``create_blob``, ``delete``, ``copy``, ``web_search`` and ``web_fetch``.

Nothing to meter (no tokens, no model time), so no span: each goes through an ``ollama``
client made as the caller's own would be (the same host and httpx arguments: ``headers=``,
``timeout=``...; by default no time limit, redirects followed),
so it answers, streams and fails exactly as ``ollama.Client``'s does (``ResponseError``,
``ConnectionError``), a gateway's refusal of model management included. A closed client
makes none (:class:`ClientClosed`), as it makes no metered call.

Its connections are the model calls' transport's (``upstream/_sdk_kept.py``), so closing the
client from another thread cuts a call under way as it cuts a model call: a pull streaming
its progress raises :class:`ClientClosed` there and then, not at Ollama's next progress line
(minutes apart, for a big layer), and no thread reads a socket closed under it. Before, they
had a plain ``ollama`` client of their own, which a close only closed.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import ollama

from ollama_meter._forks import renew_after_fork
from ollama_meter.upstream._sdk import closed_under
from ollama_meter.upstream._sdk_loops import LoopClients
from ollama_meter.upstream._sdk_made import connected

Messages = Sequence[Mapping[str, Any] | ollama.Message] | None
_END = object()
_T = TypeVar("_T")


def _any(client: object) -> Any:  # pull's, push's and create's overloads take no ``stream: bool``
    return client


class Plain:
    """The ``ollama`` clients of one host, made on first use: one sync, one per event loop
    (an async client's connections belong to the loop they were opened on)."""

    def __init__(self, host: str, http: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self._http = dict(http or {})  # the caller's httpx arguments
        self._sync: ollama.Client | None = None
        self._async = LoopClients(host, lambda: connected(self._http, aio=True))
        self._lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork(self) -> None:  # a child shares no connection with its parent
        self._sync, self._lock = None, threading.Lock()
        self._async = LoopClients(self.host, lambda: connected(self._http, aio=True))

    def client(self) -> ollama.Client:
        with self._lock:
            if self._sync is None:
                self._sync = ollama.Client(self.host, **connected(self._http, aio=False))
            return self._sync

    def async_client(self) -> ollama.AsyncClient:
        return self._async.running()

    def close(self) -> None:
        """Close the sync client, cutting the calls under way (kept, closed: a stream taken
        before, read after, fails to send, and no call makes another client)."""
        with self._lock:
            client = self._sync
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close every client: each event loop's on its own (``upstream/_sdk_loops.py``)."""
        self.close()
        await self._async.aclose()


class _Cut:
    """What the calls of both clients share: a failure after the client was closed is its
    closing's (:func:`closed_under`), not a transport's error from under ``close()``."""

    _plain: Plain
    _closed: bool  # the client's own
    _check_open: Callable[[], None]

    @contextlib.contextmanager
    def _cut(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if self._closed and not isinstance(exc, ollama.ResponseError):  # Ollama's own word
                raise closed_under() from exc
            raise


class _Lines:
    """An async stream of progress: ``ollama.AsyncClient``'s, its failures after ``close()``
    the closing's. An iterator, not an async generator (see ``_client._Chunks``)."""

    def __init__(self, calls: _Cut, lines: Any) -> None:
        self._calls, self._lines, self._started = calls, lines, False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> Any:
        if not self._started:
            self._calls._check_open()  # its request goes when it is first read
            self._started = True
        with self._calls._cut():
            return await anext(self._lines)

    async def aclose(self) -> None:
        await self._lines.aclose()

    # Ollama's async streams are async generators: code may send to them and throw into them.
    async def asend(self, value: Any) -> Any:
        """The next line (a stream takes nothing sent; ``value`` is not used, as Ollama's)."""
        return await self.__anext__()

    async def athrow(self, error: BaseException) -> Any:
        """``error`` raised to the caller, the stream ended (its connection let go)."""
        await self.aclose()
        raise error


class ModelCalls(_Cut):
    """``MeteredClient``'s calls that run no model, as ``ollama.Client`` has them."""

    def _manage(self, call: Callable[[ollama.Client], _T]) -> _T:
        self._check_open()
        with self._cut():
            answer: Any = call(self._plain.client())
        return cast("_T", self._read(answer) if inspect.isgenerator(answer) else answer)

    def _read(self, lines: Generator[Any, Any, Any]) -> Iterator[Any]:
        try:
            self._check_open()  # its request goes when it is first read
            while True:
                with self._cut():
                    line = next(lines, _END)
                if line is _END:
                    return
                yield line
        finally:
            lines.close()  # left unread (break, dropped): its connection goes back now

    def list(self) -> ollama.ListResponse:
        return self._manage(lambda c: c.list())

    def show(self, model: str) -> ollama.ShowResponse:
        return self._manage(lambda c: c.show(model))

    def ps(self) -> ollama.ProcessResponse:
        return self._manage(lambda c: c.ps())

    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return self._manage(lambda c: _any(c).pull(model, insecure=insecure, stream=stream))

    def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return self._manage(lambda c: _any(c).push(model, insecure=insecure, stream=stream))

    def create(
        self,
        model: str,
        quantize: str | None = None,
        from_: str | None = None,
        files: dict[str, str] | None = None,
        adapters: dict[str, str] | None = None,
        template: str | None = None,
        license: str | builtins.list[str] | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | ollama.Options | None = None,
        messages: Messages = None,
        *,
        stream: bool = False,
    ) -> Any:
        return self._manage(
            lambda c: _any(c).create(
                model, quantize, from_, files, adapters, template, license, system, parameters,
                messages, stream=stream,
            )
        )  # fmt: skip

    def create_blob(self, path: str | Path) -> str:
        return self._manage(lambda c: c.create_blob(path))

    def delete(self, model: str) -> ollama.StatusResponse:
        return self._manage(lambda c: c.delete(model))

    def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return self._manage(lambda c: c.copy(source, destination))

    def web_search(self, query: str, max_results: int = 3) -> ollama.WebSearchResponse:
        return self._manage(lambda c: c.web_search(query, max_results))

    def web_fetch(self, url: str) -> ollama.WebFetchResponse:
        return self._manage(lambda c: c.web_fetch(url))


class AsyncModelCalls(_Cut):
    """``AsyncMeteredClient``'s calls that run no model, as ``ollama.AsyncClient`` has them."""

    async def _manage(self, call: Callable[[ollama.AsyncClient], Awaitable[_T]]) -> _T:
        self._check_open()
        with self._cut():
            answer: Any = await call(self._plain.async_client())
        return cast("_T", _Lines(self, answer) if inspect.isasyncgen(answer) else answer)

    async def list(self) -> ollama.ListResponse:
        return await self._manage(lambda c: c.list())

    async def show(self, model: str) -> ollama.ShowResponse:
        return await self._manage(lambda c: c.show(model))

    async def ps(self) -> ollama.ProcessResponse:
        return await self._manage(lambda c: c.ps())

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return await self._manage(lambda c: _any(c).pull(model, insecure=insecure, stream=stream))

    async def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return await self._manage(lambda c: _any(c).push(model, insecure=insecure, stream=stream))

    async def create(
        self,
        model: str,
        quantize: str | None = None,
        from_: str | None = None,
        files: dict[str, str] | None = None,
        adapters: dict[str, str] | None = None,
        template: str | None = None,
        license: str | builtins.list[str] | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | ollama.Options | None = None,
        messages: Messages = None,
        *,
        stream: bool = False,
    ) -> Any:
        return await self._manage(
            lambda c: _any(c).create(
                model, quantize, from_, files, adapters, template, license, system, parameters,
                messages, stream=stream,
            )
        )  # fmt: skip

    async def create_blob(self, path: str | Path) -> str:
        return await self._manage(lambda c: c.create_blob(path))

    async def delete(self, model: str) -> ollama.StatusResponse:
        return await self._manage(lambda c: c.delete(model))

    async def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return await self._manage(lambda c: c.copy(source, destination))

    async def web_search(self, query: str, max_results: int = 3) -> ollama.WebSearchResponse:
        return await self._manage(lambda c: c.web_search(query, max_results))

    async def web_fetch(self, url: str) -> ollama.WebFetchResponse:
        return await self._manage(lambda c: c.web_fetch(url))
