"""The Python API: ``MeteredClient`` and ``AsyncMeteredClient``, drop-ins for the ``ollama`` clients.

Same ``chat``, ``generate``, ``embed`` and ``embeddings`` calls, plus who to charge. Every call
goes through the one meter (the calls that run no model, ``list``, ``pull``... go as the
``ollama`` client's do: ``_managing.py``); answers are the ``ollama`` response objects with a
``meter`` attribute (on the last chunk of a stream).
"""

from __future__ import annotations

import asyncio
import functools
import types
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import ollama

from ollama_meter._answers import (
    MeteredChatResponse,
    MeteredEmbeddingsResponse,
    MeteredEmbedResponse,
    MeteredGenerateResponse,
    with_meter,
)
from ollama_meter._arguments import (
    NOT_NONE,
    WHO,
    check_settings,
    http_options,
    malformed,
    read_once,
    stream_of,
    stream_refused,
    tags_of,
)
from ollama_meter._hooks import Hook, Hooks, check_hook
from ollama_meter._managing import AsyncModelCalls, ModelCalls, Plain
from ollama_meter._raised import raised_as_ollamas
from ollama_meter.config import load_settings
from ollama_meter.errors import ClientClosed, InvalidRequest, InvalidRequestType
from ollama_meter.meter import Attribution, Meter, Run

_Chat = TypeVar("_Chat")
_Generate = TypeVar("_Generate")
_Embed = TypeVar("_Embed")
_Embeddings = TypeVar("_Embeddings")


@dataclass(frozen=True, slots=True)
class _Asked:
    """A call as its arguments ask it: its :class:`Run`, what makes it malformed (None: it
    is not), and whether its one answer is handed over as a stream of one chunk (``stream``
    true to Python, false to the request model: ``"no"``; the ``ollama`` client does so)."""

    run: Run
    problem: tuple[str, bool] | None
    one_chunk: bool


class _Base(ABC, Generic[_Chat, _Generate, _Embed, _Embeddings]):
    """The calls, once: each builds its request and who to charge, then hands it to ``_go``.

    The sync and async clients differ only in how they drive a :class:`Run`
    (``_go``); the type parameters say what each call returns there.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_start: Hook | None = None,
        on_end: Hook | None = None,
        db_url: str | None = None,
        **settings: Any,
    ) -> None:
        http = http_options(type(self).__name__, settings)  # ollama.Client's for httpx
        check_settings(type(self).__name__, settings)
        check_hook("on_start", on_start)
        check_hook("on_end", on_end)
        cfg = load_settings(ollama_host=host, db_url=db_url, **settings)
        # ``is not None``: a hook object may be falsy (one with a __len__ of 0, say)
        hooks = [] if on_start is None and on_end is None else [Hooks(on_start, on_end)]
        self.meter = Meter.from_settings(cfg, source="sdk", observers=hooks, http=http)
        self._plain = Plain(self.meter.upstream.host, http)  # for the calls that run no model
        self.attribution = Attribution(
            tenant=cfg.tenant if tenant is None else tenant,
            department=cfg.department if department is None else department,
            user=user,
            tags=dict(tags_of(tags)),
        )
        self._closed = False

    def chat(
        self,
        model: str = "",
        messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[Any] | None = None,
        stream: bool = False,
        think: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        format: Any = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
    ) -> _Chat:
        return cast("_Chat", self._call("chat", locals()))

    def generate(
        self,
        model: str = "",
        prompt: str | None = None,
        suffix: str | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        stream: bool = False,
        think: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        raw: bool | None = None,
        format: Any = None,
        images: Sequence[Any] | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
    ) -> _Generate:
        return cast("_Generate", self._call("generate", locals()))

    def embed(
        self,
        model: str = "",
        input: str | Sequence[str] = "",
        truncate: bool | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        dimensions: int | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> _Embed:
        return cast("_Embed", self._call("embed", locals()))

    def embeddings(
        self,
        model: str = "",
        prompt: str | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> _Embeddings:
        """The ``ollama`` client's older call for one vector (``/api/embeddings``)."""
        return cast("_Embeddings", self._call("embeddings", locals()))

    def _call(self, operation: str, arguments: dict[str, Any]) -> Any:
        """A call from its method's arguments, driven by ``_go`` (which reads them when it
        starts: an async call fails when awaited, as ``ollama.AsyncClient``'s do)."""
        return self._go(functools.partial(self._asked, operation, arguments))

    def _asked(self, operation: str, arguments: dict[str, Any]) -> _Asked:
        """The call's :class:`Run` (who to charge, ``stream``, and the request), and whether
        it is malformed.

        Every other parameter is named as Ollama names the request field; unset ones
        (None) are left out of the request, as the ``ollama`` client leaves them out.
        """
        given = {name: value for name, value in arguments.items() if name != "self"}
        flag = given.pop("stream", False)
        stream = stream_of(flag)
        tenant, department, user, tags = (given.pop(name) for name in WHO)
        base = who = self.attribution
        if tenant is not None or department is not None or user is not None or tags is not None:
            who = Attribution(
                tenant=base.tenant if tenant is None else tenant,
                department=base.department if department is None else department,
                user=user if user is not None else base.user,
                tags={**base.tags, **tags_of(tags)},
            )
        kept = NOT_NONE[operation]
        request = read_once(
            operation,
            {name: value for name, value in given.items() if value is not None or name in kept},
        )
        run = self.meter.run(operation, request, attribution=who, stream=bool(stream))
        problem = malformed(request)
        if problem is None and stream is None:
            problem = stream_refused(flag), False
        return _Asked(run, problem, one_chunk=stream is False and bool(flag))

    def _malformed(self, run: Run, problem: tuple[str, bool]) -> InvalidRequest:
        """The refusal of a call :func:`malformed` says is one, recorded: the ``ollama``
        client refuses ``model=None`` before sending, as it does ``model=5``, and the gateway
        records a request without a model, or with ``messages`` of another shape."""
        said, typed = problem
        refusal = (InvalidRequestType if typed else InvalidRequest)(
            f"the request is malformed, so it was not sent to Ollama: {said}"
        )
        model = run.request.get("model")
        self.meter.refuse(
            operation=run.operation,
            model=model.strip() if isinstance(model, str) else "",
            attribution=run.attribution,
            error_type=refusal.error_type,
            message=str(refusal),
            http_status=400,
            stream=run.stream,
        )
        return refusal

    @abstractmethod
    def _go(self, make: Callable[[], _Asked]) -> Any:
        """Drive the call ``make`` builds: its one answer with ``meter``, or its chunks."""

    def _check_open(self) -> None:
        """A closed client makes no call: the caller's mistake, neither Ollama's nor a span."""
        if self._closed:
            raise ClientClosed(
                f"this {type(self).__name__} is closed; make a new one to call Ollama again"
            )


def _metered(part: Any, run: Run) -> Any:
    """A chunk as it came, but the last (the span is written by then) with ``meter``."""
    return with_meter(part, run) if run.call is not None and run.call.span.ended_at else part


class MeteredClient(
    _Base[
        MeteredChatResponse | Iterator[ollama.ChatResponse],
        MeteredGenerateResponse | Iterator[ollama.GenerateResponse],
        MeteredEmbedResponse,
        MeteredEmbeddingsResponse,
    ],
    ModelCalls,
):
    """``ollama.Client`` with metering: ``MeteredClient(department="sales").chat(...)``."""

    def _go(self, make: Callable[[], _Asked]) -> Any:
        self._check_open()
        asked = make()
        run = asked.run
        if asked.problem is not None:
            raise self._malformed(run, asked.problem)
        if run.stream:
            return self._streamed(run)
        return self._one_chunk(run) if asked.one_chunk else self._whole(run)

    def _whole(self, run: Run) -> Any:
        with raised_as_ollamas():
            (answer,) = list(run)
        return with_meter(answer, run)

    def _one_chunk(self, run: Run) -> Iterator[Any]:
        self._check_open()  # called when first read, as a stream's
        yield self._whole(run)

    def _streamed(self, run: Run) -> Iterator[Any]:
        self._check_open()  # a stream's call starts when it is first read: maybe after close()
        parts = run.__iter__()
        try:
            with raised_as_ollamas():
                for part in parts:
                    yield _metered(part, run)
        finally:  # left unread (break, dropped): the call ends now, not when it is collected
            parts.close()

    def close(self) -> None:
        self._closed = True
        self.meter.close_upstream()
        self._plain.close()

    def __enter__(self) -> MeteredClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLOSING: set[asyncio.Task[None]] = set()
"""The closing of streams left unfinished, held until done (the loop holds tasks weakly)."""


class _Chunks:
    """An async stream as ``ollama.AsyncClient`` hands one over: its chunks, the last with
    ``meter``; ``aclose()`` ends the call, and so does leaving it unfinished (``break``).
    An iterator, not an async generator of its own: the loop's finalizer and its shutdown
    would close it too, at once with the layers it closes itself."""

    def __init__(self, client: AsyncMeteredClient, run: Run) -> None:
        self._client, self._run = client, run
        self._parts: AsyncGenerator[Any, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = False  # thrown into: nothing more

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        if self._parts is None:
            self._client._check_open()  # its call starts when it is first read: after close()?
            self._parts, self._loop = self._run.__aiter__(), asyncio.get_running_loop()
        with raised_as_ollamas():
            return _metered(await anext(self._parts), self._run)

    async def aclose(self) -> None:
        if self._parts is not None:
            await self._parts.aclose()

    # Ollama's async streams are async generators: code may send to them and throw into them.
    async def asend(self, value: Any) -> Any:
        """The next chunk (a stream takes nothing sent; ``value`` is not used, as Ollama's)."""
        return await self.__anext__()

    async def athrow(self, error: BaseException) -> Any:
        """``error`` raised where the stream stands, to the caller: the stream ends, and its
        call as one left unfinished does (``client_abort``, as a sync stream's ``throw``;
        not a failure named after the caller's exception). Thrown before the first chunk was
        read, no call is made."""
        self._ended = True
        await self.aclose()
        raise error

    def __del__(self) -> None:
        # Left unfinished (``break``), its call is closed now, layer after layer, in one task
        # on this loop. Left to the loop's finalizer, its task was cancelled before it ran as
        # ``asyncio.run`` ended, and the loop's shutdown closed every layer at once while each
        # closed the next: "already running" on stderr.
        parts = self._parts
        if (
            not isinstance(parts, types.AsyncGeneratorType)
            or parts.ag_frame is None
            or parts.ag_running
        ):
            return
        if self._loop is not None and self._loop.is_closed():
            # No loop will run its closing (run_until_complete, then close): its call ends
            # here, or only at the exit, when its span waited in the journal that long.
            if self._run.call is not None:
                self._client.meter.close(self._run.call, GeneratorExit())
            return
        try:
            if asyncio.get_running_loop() is not self._loop:
                return  # not on its loop: the generator's own finalizer closes it
        except RuntimeError:
            return
        closing = self._loop.create_task(parts.aclose())
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)


class AsyncMeteredClient(
    _Base[
        Awaitable[MeteredChatResponse | AsyncIterator[ollama.ChatResponse]],
        Awaitable[MeteredGenerateResponse | AsyncIterator[ollama.GenerateResponse]],
        Awaitable[MeteredEmbedResponse],
        Awaitable[MeteredEmbeddingsResponse],
    ],
    AsyncModelCalls,
):
    """``ollama.AsyncClient`` with metering; the ledger writes run off the event loop.

    Each call returns an awaitable, as ``ollama.AsyncClient``'s do.
    """

    async def _go(self, make: Callable[[], _Asked]) -> Any:
        self._check_open()
        asked = make()
        run = asked.run
        if asked.problem is not None:
            raise await asyncio.to_thread(self._malformed, run, asked.problem)
        if run.stream:
            return _Chunks(self, run)
        return self._one_chunk(run) if asked.one_chunk else await self._whole(run)

    async def _whole(self, run: Run) -> Any:
        with raised_as_ollamas():
            answers = [part async for part in run]
        return with_meter(answers[-1], run)

    async def _one_chunk(self, run: Run) -> AsyncIterator[Any]:
        self._check_open()  # called when first read, as a stream's
        yield await self._whole(run)

    async def close(self) -> None:
        """Close the connections to Ollama, as ``ollama.AsyncClient.close`` does."""
        self._closed = True
        await self.meter.aclose_upstream()
        await self._plain.aclose()

    async def __aenter__(self) -> AsyncMeteredClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
