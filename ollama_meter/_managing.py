"""The ``ollama`` clients' calls that run no model: ``list``, ``show``, ``ps``, ``pull``, ``push``,
``create``, ``create_blob``, ``delete``, ``copy``, ``web_search`` and ``web_fetch``.

Nothing to meter (no tokens, no model time), so no span: each goes through an ``ollama``
client made as the caller's own would be (the same host and httpx arguments: ``headers=``,
``timeout=``...; by default no time limit, redirects followed),
so it answers, streams and fails exactly as ``ollama.Client``'s does (``ResponseError``,
``ConnectionError``), a gateway's refusal of model management included. A closed client
makes none (:class:`ClientClosed`), as it makes no metered call.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ollama

from ollama_meter._forks import renew_after_fork
from ollama_meter.upstream._sdk_loops import LoopClients
from ollama_meter.upstream._tls import client_tls

Messages = Sequence[Mapping[str, Any] | ollama.Message] | None


class Plain:
    """The ``ollama`` clients of one host, made on first use: one sync, one per event loop
    (an async client's connections belong to the loop they were opened on)."""

    def __init__(self, host: str, http: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self._http = {"verify": client_tls(), **(http or {})}  # the caller's httpx arguments
        self._sync: ollama.Client | None = None
        self._async = LoopClients(host, lambda: dict(self._http))
        self._lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork(self) -> None:  # a child shares no connection with its parent
        self._sync, self._lock = None, threading.Lock()
        self._async = LoopClients(self.host, lambda: dict(self._http))

    def client(self) -> ollama.Client:
        with self._lock:
            if self._sync is None:
                self._sync = ollama.Client(self.host, **self._http)
            return self._sync

    def async_client(self) -> ollama.AsyncClient:
        return self._async.running()

    def close(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close every client: each event loop's on its own (``upstream/_sdk_loops.py``)."""
        self.close()
        await self._async.aclose()


class ModelCalls:
    """``MeteredClient``'s calls that run no model, as ``ollama.Client`` has them."""

    _plain: Plain
    _check_open: Callable[[], None]  # the client's own

    def _ollama(self) -> ollama.Client:
        self._check_open()
        return self._plain.client()

    def _any(self) -> Any:  # its overloads take no ``stream: bool``
        return self._ollama()

    def list(self) -> ollama.ListResponse:
        return self._ollama().list()

    def show(self, model: str) -> ollama.ShowResponse:
        return self._ollama().show(model)

    def ps(self) -> ollama.ProcessResponse:
        return self._ollama().ps()

    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return self._any().pull(model, insecure=insecure, stream=stream)

    def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return self._any().push(model, insecure=insecure, stream=stream)

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
        return self._any().create(
            model, quantize, from_, files, adapters, template, license, system, parameters,
            messages, stream=stream,
        )  # fmt: skip

    def create_blob(self, path: str | Path) -> str:
        return self._ollama().create_blob(path)

    def delete(self, model: str) -> ollama.StatusResponse:
        return self._ollama().delete(model)

    def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return self._ollama().copy(source, destination)

    def web_search(self, query: str, max_results: int = 3) -> ollama.WebSearchResponse:
        return self._ollama().web_search(query, max_results)

    def web_fetch(self, url: str) -> ollama.WebFetchResponse:
        return self._ollama().web_fetch(url)


class AsyncModelCalls:
    """``AsyncMeteredClient``'s calls that run no model, as ``ollama.AsyncClient`` has them."""

    _plain: Plain
    _check_open: Callable[[], None]  # the client's own

    def _ollama(self) -> ollama.AsyncClient:
        self._check_open()
        return self._plain.async_client()

    def _any(self) -> Any:  # its overloads take no ``stream: bool``
        return self._ollama()

    async def list(self) -> ollama.ListResponse:
        return await self._ollama().list()

    async def show(self, model: str) -> ollama.ShowResponse:
        return await self._ollama().show(model)

    async def ps(self) -> ollama.ProcessResponse:
        return await self._ollama().ps()

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return await self._any().pull(model, insecure=insecure, stream=stream)

    async def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        return await self._any().push(model, insecure=insecure, stream=stream)

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
        return await self._any().create(
            model, quantize, from_, files, adapters, template, license, system, parameters,
            messages, stream=stream,
        )  # fmt: skip

    async def create_blob(self, path: str | Path) -> str:
        return await self._ollama().create_blob(path)

    async def delete(self, model: str) -> ollama.StatusResponse:
        return await self._ollama().delete(model)

    async def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return await self._ollama().copy(source, destination)

    async def web_search(self, query: str, max_results: int = 3) -> ollama.WebSearchResponse:
        return await self._ollama().web_search(query, max_results)

    async def web_fetch(self, url: str) -> ollama.WebFetchResponse:
        return await self._ollama().web_fetch(url)
