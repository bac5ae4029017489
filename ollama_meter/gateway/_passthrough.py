"""Routes passed through to Ollama unmetered: which server answers, and how.

With several servers, ``/api/tags``, ``/api/ps`` and ``/v1/models`` are the union
of what they have; anything else (``/api/show``, ``/api/version``, model
management) goes to a server that has the model the body names, or the path
(``/v1/models/{model}``, OpenAI's ``models.retrieve``); ``/api/create`` and the blobs it
names go to the first server up, together. The answer is
relayed as it comes, status, headers and body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Send

from ollama_meter.errors import UpstreamError
from ollama_meter.gateway._answers import error_response
from ollama_meter.gateway._fleet import UNION, Fleet
from ollama_meter.gateway._json import INLINE_PARSE_BYTES
from ollama_meter.gateway._model_names import model_named
from ollama_meter.gateway._onward import forward_headers
from ollama_meter.gateway._relay import wire_of
from ollama_meter.gateway._slots import CallerGone, Heard, hangup_of, until_gone
from ollama_meter.upstream import OLLAMA, gateway_status
from ollama_meter.upstream._pooled import as_sent

log = logging.getLogger("ollama_meter.gateway")

OPENAI_MODEL = "/v1/models/"
"""Where Ollama shows one model to OpenAI clients: ``GET /v1/models/{model}``."""

PASSTHROUGH = (
    *("/api/tags", "/api/ps", "/api/show", "/api/version", "/v1/models", "/"),
    f"{OPENAI_MODEL}{{model:path}}",  # the rest of the path is the name: it may hold slashes
)
"""The routes passed through, as the app registers them."""

BLOBS = "/api/blobs/"
"""Where ``ollama create`` uploads a model's files (``HEAD``: does Ollama have it?) before it
names them in ``/api/create``: model management, streamed on, never held (gigabytes)."""

_PATH_SAFE = "/:@!$&'()*+,;=~"
"""What stays as it is in a forwarded path (RFC 3986's pchar); anything else is %-encoded."""

_NOT_RELAYED = frozenset({
    b"content-length", b"transfer-encoding", b"connection", b"content-encoding",
    b"date", b"server",  # the gateway's server writes its own: two of a field that is one
})  # fmt: skip


async def forward(
    fleet: Fleet, request: Request, *, body: bytes | AsyncIterable[bytes] | None
) -> Response:
    """Ollama's answer to ``request``, or the union of the servers'.

    ``body`` was read whole, or (a blob upload) is streamed on as it arrives.
    """
    path = request.url.path
    if fleet.several and path in UNION and request.method != "POST":
        try:
            union = await fleet.union(path)
        except UpstreamError as exc:
            return error_response(wire_of(path), 502, str(exc))
        return JSONResponse(union) if request.method == "GET" else Response(status_code=200)
    if path == "/api/create" or path.startswith(BLOBS):
        # A create names blobs uploaded before it: both go where blobs go, the first server up.
        server = fleet.server_for(None)
    else:
        named = path.removeprefix(OPENAI_MODEL) if path.startswith(OPENAI_MODEL) else None
        if named is None and fleet.several and isinstance(body, bytes):  # one: no choice
            # A large body takes milliseconds to read: not on the event loop.
            inline = len(body) <= INLINE_PARSE_BYTES
            named = model_named(body) if inline else await asyncio.to_thread(model_named, body)
        server = fleet.server_for(named)
    pool = server.pool
    # Until the answer starts, the caller is listened for: one that leaves a pull (minutes of
    # nothing; a stream:false one sends even its headers at the end) has its connection to
    # Ollama dropped, which stops it. Not while a blob upload reads the request (streamed on).
    hangup = None if isinstance(body, AsyncIterable) else hangup_of(request)
    try:
        sent = pool.request(
            request.method,
            # Sent as received: encoded again, so no client decodes a %2e twice into a "..".
            quote(request.scope["path"], safe=_PATH_SAFE),
            body=body,
            query=request.url.query,
            headers=forward_headers(request.headers),
        )
        response = await until_gone(sent, hangup)
    except UpstreamError as exc:
        return error_response(wire_of(path), gateway_status(exc), str(exc))
    except CallerGone:
        return Response(status_code=499)  # nobody is there to read it

    lines = response.content_type == "application/x-ndjson"  # a pull's progress, say
    chunks = pool.chunks(response)

    async def ending() -> None:
        """However the answer ends, sent or not: Ollama's connection goes back to the pool
        when its body was read to the end, else is dropped (which stops Ollama), and the
        read of it is closed here, not left to the event loop's finalizer."""
        pool.finish(response, completed=response.content.at_eof())
        await chunks.aclose()

    try:  # before the answer starts: one that breaks off before its first byte is a 502
        first = await until_gone(anext(chunks, b""), hangup)
    except UpstreamError as exc:
        await ending()
        log.warning("passing %s through: %s", path, exc)
        return error_response(wire_of(path), gateway_status(exc), str(exc))
    except CallerGone:  # the connection to Ollama is dropped, which stops it
        await ending()
        return Response(status_code=499)  # nobody is there to read it
    except BaseException:
        await ending()
        raise

    async def relayed() -> AsyncGenerator[bytes, None]:
        # A write into a caller that has gone returns as if sent, and its hang-up reaches
        # this generator only once Ollama's answer stops coming: the relay read a large
        # answer to its end for nobody. Listening itself, it stops at its next write.
        heard = Heard(hangup)
        last = first[-1:] or b"\n"
        try:
            if first:
                yield first
            async for chunk in chunks:
                if heard.gone:  # what it was sent went nowhere: Ollama's connection goes
                    return
                yield chunk
                last = chunk[-1:] or last
        except UpstreamError as exc:
            log.warning("passing %s through: %s", path, exc)
            if not lines:
                raise _BrokeOff from None
            # Ended as Ollama ends a stream that failed, so the client raises.
            yield (b"" if last == b"\n" else b"\n") + OLLAMA.error_frame(str(exc))
        finally:
            heard.close()

    answer = _Relayed(relayed(), status_code=response.status, ending=ending)
    answer.raw_headers += [(k, v) for k, v in as_sent(response) if k not in _NOT_RELAYED]
    return answer


class _BrokeOff(Exception):
    """Ollama's answer broke off partway, in a body that has no way to say so."""


class _Relayed(StreamingResponse):
    """An answer relayed as it comes; one that broke off (:class:`_BrokeOff`) ends without
    its end (no last chunk), so the server closes the connection and the client raises, as
    it would against Ollama. Ended well, a client could not tell a cut body from a whole one.

    However it ends (its caller gone before its first byte or mid-way, when Starlette leaves
    the relay suspended), the relay is closed and ``ending`` runs."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        status_code: int,
        ending: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(content, status_code=status_code)
        self._relay = content
        self._ending = ending

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._relay.aclose()
            await self._ending()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except _BrokeOff:
            return
