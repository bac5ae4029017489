"""The ollama SDK transport: calls through the official ``ollama`` client (CLI and Python API).

``call`` (one answer) and ``stream`` (chunks as they arrive), and their async
twins, each go through the one policy (``_resilience.py``): a call passes the
breaker once, its attempts are retried on transient failures while the caller
has seen nothing (a stream only before its first chunk), and its outcome counts
once. What the client library raised is reduced here to the one classifier's
terms (``_classify.py``); the answers stay the client's own objects, which the
Python API hands back and ``_wire.py`` reads for the meter.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import Any

import httpx
import ollama
import pydantic

from ollama_meter._forks import renew_after_fork
from ollama_meter.errors import ClientClosed, InvalidRequestType, UpstreamError
from ollama_meter.upstream._classify import (
    Failure,
    answer_error,
    error_text,
    gateway_refusal,
    hung_up,
    mid_stream_error,
    no_connection,
    no_connection_free,
    not_an_answer,
    reported_error,
    transport_error,
    unfinished_error,
    unreadable,
)
from ollama_meter.upstream._recorded import REFUSED_HEADER, SPAN_HEADER, Heard
from ollama_meter.upstream._resilience import (
    CircuitBreaker,
    Resilient,
    RetryPolicy,
    Waits,
    breaker_for,
)
from ollama_meter.upstream._sdk_heard import ANSWERED as _ANSWERED, attempting, sent_whole
from ollama_meter.upstream._sdk_loops import LoopClients
from ollama_meter.upstream._sdk_made import client_arguments
from ollama_meter.upstream._sdk_said import (
    header_of_error as _header,
    one_line as _one_line,
    refused_by_client as _refused_by_client,
    reported_in as _reported_in,
    retry_after_of as _retry_after,
    said_nothing as _said_nothing,
)
from ollama_meter.upstream._sdk_time import TimeCap, within as _within
from ollama_meter.upstream._sent import as_sent

Message = Mapping[str, Any]
Response = ollama.ChatResponse | ollama.GenerateResponse | ollama.EmbedResponse
OPERATIONS = ("chat", "generate", "embed")


class Upstream(Resilient):
    """One Ollama server through the ``ollama`` client. Holds pooled clients; thread-safe."""

    def __init__(
        self,
        host: str,
        *,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        http: Mapping[str, Any] | None = None,
    ) -> None:
        """``http``: the httpx arguments ``ollama.Client`` takes, given by the caller
        (``headers``, ``timeout``, ``verify``...: see ``_sdk_made.py``)."""
        super().__init__(
            host,
            retry=retry or RetryPolicy(),
            breaker=breaker or breaker_for(host, threshold=3, reset_after=60.0),
        )
        self._timeout = timeout
        self._http = dict(http or {})
        self.client = self._new_client()
        self._async = self._new_async()
        self.closed = False
        """Whether :meth:`close` was called: what fails after it is the caller's doing."""
        renew_after_fork(self)

    def _new_client(self) -> ollama.Client:
        return ollama.Client(
            host=self.host, **client_arguments(self._timeout, self._http, aio=False)
        )

    def _new_async(self) -> LoopClients:
        return LoopClients(self.host, lambda: client_arguments(self._timeout, self._http, aio=True))

    def _after_fork(self) -> None:
        """A forked child connects to Ollama on its own: on a kept-alive connection it
        shared with its parent, each process read the other's answers."""
        self.client = self._new_client()
        self._async = self._new_async()

    @property
    def async_client(self) -> ollama.AsyncClient:
        """The async client of the running event loop (``_sdk_loops.py``: one a loop)."""
        return self._async.running()

    def sent(self, operation: str, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """``request`` as the ``ollama`` client writes it (bytes as text, models as JSON)."""
        return as_sent(operation, request)

    def call(
        self,
        operation: str,
        request: Mapping[str, Any],
        time_cap: TimeCap | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Response:
        """One answer, retrying transient failures with backoff; raises a classified error.

        ``time_cap``: the call is cut (its error raised) once it has waited that long.
        ``caller``: whose call it is, for the model's circuits (see ``CircuitBreaker``);
        ``heard``: what the call sends, and what its answer says of its record."""
        method = getattr(self.client, operation)
        model = str(request.get("model", ""))
        attempts = self.attempts(model, waits=time_cap, caller=caller)

        def attempt() -> Response:
            attempting(heard)
            try:
                with _within(time_cap):
                    return self._checked(operation, method(**request, **_no_stream(operation)))
            except Exception as exc:
                raise _taken(exc, self.classify(exc, model=model, started=False)) from exc

        result = attempts.run(attempt)
        attempts.end()
        return result

    def stream(
        self,
        operation: str,
        request: Mapping[str, Any],
        time_cap: TimeCap | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Generator[Response, None, None]:
        """Ollama's chunks as they arrive; raises a classified error.

        A failure before the first chunk is retried like :meth:`call` (the caller has
        seen nothing yet); after it, never. A stream that ends before Ollama's ``done``
        chunk was cut short (a proxy closing cleanly), and fails as the gateway's does; the
        answer ends at that chunk, as the gateway reads it: what an upstream sends after it
        (the chunk again, other figures) is neither handed over nor charged.
        ``time_cap``: no wait for a chunk outlasts the time the call had left when sent.
        """
        model = str(request.get("model", ""))
        attempts = self.attempts(model, waits=time_cap, caller=caller)

        def first() -> tuple[Iterator[Response], Response | None]:
            attempting(heard)
            try:
                with _within(time_cap):
                    parts: Iterator[Response] = getattr(self.client, operation)(
                        **request, stream=True
                    )
                    return parts, next(parts, None)
            except Exception as exc:
                error = self.classify(exc, model=model, started=False)
                raise _taken(exc, error) from exc

        parts, part = attempts.run(first)
        try:
            done = False
            while part is not None:
                done = _says_done(part)
                yield part
                if done:  # the answer's end: nothing after it is the answer's (nor charged)
                    with contextlib.suppress(Exception), _within(time_cap):
                        next(parts, None)  # read to the body's end, to keep its connection
                    break
                with _within(time_cap):
                    part = next(parts, None)
            if not done:
                raise unfinished_error(self.host)
        except Exception as exc:
            error = self.classify(exc, model=model, started=True)
            attempts.end(error)
            raise error from exc
        except BaseException as exc:  # the caller stopped reading, Ctrl-C
            attempts.end(exc)
            raise
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()
        attempts.end()

    async def acall(
        self,
        operation: str,
        request: Mapping[str, Any],
        waits: Waits | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> Response:
        """:meth:`call` on the event loop; ``waits`` is told of the waits between attempts
        (the caller cuts the call on time: see ``MeteredCall.in_time``)."""
        method = getattr(self.async_client, operation)
        model = str(request.get("model", ""))
        attempts = self.attempts(model, waits=waits, caller=caller)

        async def attempt() -> Response:
            attempting(heard)
            try:
                return self._checked(operation, await method(**request, **_no_stream(operation)))
            except Exception as exc:
                raise _taken(exc, self.classify(exc, model=model, started=False)) from exc

        result = await attempts.arun(attempt)
        attempts.end()
        return result

    async def astream(
        self,
        operation: str,
        request: Mapping[str, Any],
        waits: Waits | None = None,
        *,
        caller: str = "",
        heard: Heard | None = None,
    ) -> AsyncGenerator[Response, None]:
        """:meth:`stream` on the event loop; ``waits`` as for :meth:`acall`."""
        model = str(request.get("model", ""))
        attempts = self.attempts(model, waits=waits, caller=caller)

        async def first() -> tuple[AsyncIterator[Response], Response | None]:
            attempting(heard)
            try:
                parts = await getattr(self.async_client, operation)(**request, stream=True)
                return parts, await anext(parts, None)
            except Exception as exc:
                error = self.classify(exc, model=model, started=False)
                raise _taken(exc, error) from exc

        parts, part = await attempts.arun(first)
        try:
            done = False
            while part is not None:
                done = _says_done(part)
                yield part
                if done:  # as :meth:`stream`
                    with contextlib.suppress(Exception):
                        await anext(parts, None)
                    break
                part = await anext(parts, None)
            if not done:
                raise unfinished_error(self.host)
        except Exception as exc:
            error = self.classify(exc, model=model, started=True)
            attempts.end(error)
            raise error from exc
        except BaseException as exc:
            attempts.end(exc)
            raise
        finally:
            close = getattr(parts, "aclose", None)
            if close is not None:
                await close()
        attempts.end()

    def _checked(self, operation: str, answer: Response) -> Response:
        """A whole answer that reports a failure inside its 200 is that failure; one that is
        not done (``done: false``) is not an answer, as the gateway has it."""
        failure = reported_error(answer)
        if failure is not None:
            raise failure
        if operation in ("chat", "generate") and not _says_done(answer):
            error = not_an_answer(self.host, 'the object does not say "done": true')
            error.consumed = True  # a whole 200 came: the work was done, as the gateway has it
            raise error
        return answer

    def classify(
        self, exc: BaseException, *, model: str, started: bool
    ) -> UpstreamError | ClientClosed:
        """What the ``ollama`` client or httpx raised, as the one classifier says it.

        Once the caller has closed this transport, a call that fails failed for that: its
        connections were closed under it (ClientClosed), not Ollama's doing, nor counted.
        """
        if isinstance(exc, UpstreamError | ClientClosed):
            return exc
        if self.closed and not isinstance(exc, ollama.ResponseError):
            return closed_under()
        if isinstance(exc, ollama.ResponseError):
            detail = error_text(exc.error)
            if exc.status_code == -1:  # an {"error": ...} line inside a 200 stream
                return mid_stream_error(detail)
            error = (
                gateway_refusal(  # the gateway's own refusal
                    refused,
                    exc.status_code,
                    detail,
                    host=self.host,
                    model=model,
                    retry_after=_retry_after(exc),
                )
                if (refused := _header(exc, REFUSED_HEADER))
                else answer_error(
                    exc.status_code,
                    detail,
                    host=self.host,
                    model=model,
                    retry_after=_retry_after(exc),
                    location=_header(exc, "location"),
                )
            )
            error.recorded = _header(exc, SPAN_HEADER) is not None  # a gateway's span of it
            return error
        reason = _one_line(exc)
        answered = started or _ANSWERED.get()
        if not answered and _refused_by_client(exc):
            refusal = transport_error(Failure.INVALID, host=self.host, started=False, reason=reason)
            # caught by what catches the ollama client's refusal (it raised a ValueError or this)
            return InvalidRequestType(str(refusal)) if isinstance(exc, TypeError) else refusal
        if (reported := _reported_in(exc)) is not None:
            return reported  # a 200 whose object is Ollama's {"error": ...}: its own words
        if answered and (
            isinstance(
                exc,
                pydantic.ValidationError | TypeError | UnicodeDecodeError | json.JSONDecodeError,
            )
            or _not_an_object(exc)
        ):  # an answer that is not what the API says (not JSON, not an object, not UTF-8)
            return unreadable(self.host, reason)
        if isinstance(exc, pydantic.ValidationError):
            kind, reason = (
                Failure.UNEXPECTED,
                f"its answer does not read as Ollama's API has it: {reason}",
            )
        elif isinstance(exc, httpx.PoolTimeout):  # the program holds every connection
            return no_connection_free(self.host)
        elif isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            # A connect nobody answered is an unreachable host (below); a request sent whole
            # and not answered in time, a call the upstream has: not sent again.
            silent = transport_error(Failure.TIMEOUT, host=self.host, started=started)
            silent.taken = sent_whole()
            return silent
        elif answered and isinstance(exc, httpx.HTTPError):
            # Its headers came, then its body broke off (a whole answer too): the call was
            # taken, so it is not sent again, nor the server said to be unreachable.
            kind = Failure.BROKEN
        elif isinstance(exc, httpx.RemoteProtocolError):
            if _said_nothing(exc):  # it took the connection, then closed it: no answer
                return hung_up(self.host, reason.rstrip("."))
            kind = Failure.GARBLED  # something answered, in bytes that are no HTTP answer
        elif isinstance(exc, ConnectionError | httpx.TransportError):
            return no_connection(exc, host=self.host)  # the client's own words say nothing more
        else:
            kind = Failure.UNEXPECTED
        return transport_error(kind, host=self.host, started=started, reason=reason)

    def close(self) -> None:
        self.closed = True
        self.client.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close both clients: the async ones of every event loop, each on its own."""
        self.close()
        await self._async.aclose()


def _taken(exc: BaseException, error: UpstreamError | ClientClosed) -> UpstreamError | ClientClosed:
    """``error`` (what ``exc`` is classified as), said to have come after Ollama did the work
    (``consumed``) when the client library failed to read a success's body: a whole answer
    (not JSON, cut short, a field of the wrong type), or a stream's first chunk (Ollama's 200
    goes out with it, once the prompt is evaluated): a JSON object the client refused, a line
    that is not JSON or not UTF-8, one cut short or reset, or none in time. The call is
    charged its prompt, as the gateway charges the same answer. A failure the answer itself
    reports (``{"error": ...}``) is Ollama's, and consumed nothing."""
    if (
        _ANSWERED.get()
        and isinstance(error, UpstreamError)
        and not isinstance(exc, UpstreamError | ollama.ResponseError)
        and _reported_in(exc) is None
    ):
        error.consumed = True
    return error


def _not_an_object(exc: BaseException) -> bool:
    """Whether ``exc`` is the ``ollama`` client asking a streamed line's JSON value that is no
    object (``[1, 2]``) for its ``error``: ``'list' object has no attribute 'get'``."""
    return (
        isinstance(exc, AttributeError)
        and exc.name == "get"
        and isinstance(exc.obj, list | str | int | float | None)
    )


def closed_under() -> ClientClosed:
    """What a call raises that failed because its client was closed under it (another
    thread's ``close()``): a model call's, or one that runs none (``_managing.py``)."""
    return ClientClosed(
        "the client was closed while this call to Ollama ran (close(), or the end of its "
        "with block): the call was cut there; make a new client to call Ollama again"
    )


def _says_done(part: object) -> bool:
    """Whether a streamed chunk is the last: a stream that ends before it was cut short."""
    return getattr(part, "done", None) is True


def _no_stream(operation: str) -> dict[str, Any]:
    return {} if operation in ("embed", "embeddings") else {"stream": False}
