"""The pooled aiohttp transport: the gateway's keep-alive connections to Ollama.

The relay is the hot path of every metered request, and aiohttp's C-accelerated
client costs about a third of the CPU per request that httpx's async client does
(0.20 ms against 0.66 ms, measured against the emulator), which is most of what
the gateway adds to a call. The gateway relays bytes, so this transport hands
back aiohttp's response as it arrives; what aiohttp raised is reduced to the one
classifier's terms (``_classify.py``), so the relay never sees an aiohttp
exception, and metered calls go through the one retry and breaker policy.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp.http_exceptions import (
    ContentEncodingError,
    HttpProcessingError,
    PayloadEncodingError,
)

from ollama_meter.errors import UpstreamError, UpstreamTimeout
from ollama_meter.upstream._classify import (
    GATEWAYS_HOST,
    Failure,
    answer_error,
    detail_of,
    gateway_refusal,
    hung_up,
    no_connection,
    retry_after_passed,
    retry_after_seconds,
    transport_error,
)
from ollama_meter.upstream._delivered import answered, delivered, sending_body
from ollama_meter.upstream._frames import MAX_FRAME_BYTES, Frames
from ollama_meter.upstream._kept import Connections, sending, stale
from ollama_meter.upstream._recorded import LEDGER_HEADER, REFUSED_HEADER, SPAN_HEADER
from ollama_meter.upstream._resilience import (
    CallAttempts,
    CircuitBreaker,
    Resilient,
    RetryPolicy,
    breaker_for,
)

ANSWER_STATUSES = range(200, 600)
"""The statuses of an answer (RFC 9110 §15), the only ones a server can write as one: aiohttp
reads any three digits, and hands back a 101 (the gateway asks no server to switch protocols,
and a 1xx is no answer to pass on) as it does a final status."""

MAX_ANSWER_BYTES = MAX_FRAME_BYTES
"""The longest whole answer read (a non-streamed one, or an error's body): like a stream's
longest item, an upstream that sends more lies, and the gateway's memory is not its to fill."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Ollama answered a metered call, but not with a success: its own answer, for the client."""

    error: UpstreamError
    status: int
    body: bytes
    content_type: str | None
    retry_after: str | None
    """The answer's ``Retry-After``, passed on if it says seconds or a date (``retry_after_passed``)."""
    named: dict[str, str] = field(default_factory=dict)
    """What a metering gateway's answer named of its record of the call (its ledger, its span)."""


class PooledUpstream(Resilient):
    """Keep-alive connections to one Ollama; a request returns once the headers arrived."""

    def __init__(
        self,
        host: str,
        *,
        timeout: float,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            host.rstrip("/"),
            retry=retry or RetryPolicy(),
            breaker=breaker or breaker_for(host, threshold=3, reset_after=60.0),
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self._item_s = timeout
        """The longest an item of an answer may take to arrive whole (a stream's line or
        event, a whole answer): a server dripping a byte a second is as silent as one that
        sends nothing, and held the call, its slot and its caller for as long as it dripped."""
        self._session: aiohttp.ClientSession | None = None
        self._once: aiohttp.ClientSession | None = None

    def _down(self, exc: BaseException, reason: str) -> UpstreamError:
        """No connection: told to the gateway's callers as the gateway's setting to fix."""
        return no_connection(exc, host=self.host, reason=reason, hint=GATEWAYS_HOST)

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the server's event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=Connections(limit=1000, limit_per_host=0),
                auto_decompress=True,
                # No cookie kept: one an answer set (a proxy's session in front of Ollama)
                # went with every later call to that server, whoever made it.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | AsyncIterable[bytes] | None = None,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> aiohttp.ClientResponse:
        """One attempt, whatever the answer's status; raises a classified error if none came."""
        url = f"{self.host}{path}" + (f"?{query}" if query else "")
        # Never timeout=None: that would switch aiohttp's timeouts off altogether.
        limits = aiohttp.ClientTimeout(total=timeout) if timeout else self._timeout
        try:
            response = await self._sent(method, url, body, dict(headers or {}), limits)
        except aiohttp.ConnectionTimeoutError as exc:  # nothing answered the connect
            raise self._down(exc, _reason(exc)) from exc
        except TimeoutError as exc:
            silent = transport_error(Failure.TIMEOUT, host=self.host, started=False)
            silent.taken = delivered()  # the upstream has the call: not sent again
            raise silent from exc
        except aiohttp.ClientResponseError as exc:  # what came back could not be parsed
            reason = exc.message.splitlines()[0].rstrip(":") if exc.message else _reason(exc)
            raise transport_error(
                Failure.GARBLED, host=self.host, started=True, reason=reason
            ) from exc
        except aiohttp.ServerDisconnectedError as exc:
            if isinstance(exc.message, str):  # aiohttp's "Server disconnected": not a byte came
                raise hung_up(self.host, exc.message) from exc
            # What it read of an answer's head before the connection closed: the call was
            # taken (it is not sent again), and the answer is none.
            raise transport_error(
                Failure.GARBLED,
                host=self.host,
                started=True,
                reason="the connection closed partway through its status line and headers",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._down(exc, _reason(exc)) from exc
        if response.status not in ANSWER_STATUSES:
            # Passed on as it came, a 999 could not even be written (the server's status line
            # raised: no answer at all), and a 101 told the caller its connection was switched.
            response.close()
            raise transport_error(
                Failure.GARBLED,
                host=self.host,
                started=True,
                reason=f"its status {response.status} is not an answer's (200 to 599)",
            )
        return response

    async def _sent(
        self,
        method: str,
        url: str,
        body: bytes | AsyncIterable[bytes] | None,
        headers: dict[str, str],
        limits: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """aiohttp's answer; sent again once, on a new connection, when it was lost on a
        kept-alive one that Ollama had closed (``_kept.py``)."""
        request = functools.partial(
            aiohttp.ClientSession.request,
            method=method,
            url=url,
            headers=headers,
            allow_redirects=False,
            timeout=limits,
        )
        sending()
        try:
            response = await request(self.session, data=sending_body(body))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if not stale(exc, body):
                raise
        else:
            answered(response.status)
            return response
        if self._once is None:  # a connection of its own, never kept: the pool's may be as old
            self._once = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        # The lost one's bytes reached no one: the body is noted again, as this one sends it.
        response = await request(self._once, data=sending_body(body))
        answered(response.status)
        return response

    async def send(
        self,
        attempts: CallAttempts,
        path: str,
        *,
        body: bytes,
        query: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse | Refusal:
        """A metered call: Ollama's success (status 200, body unread), or its :class:`Refusal`.

        Transient failures are retried by ``attempts`` (the one policy); a refusal or a
        failure for good has been counted by then. Raises the classified error when
        no answer came at all.
        """
        refusals: dict[int, Refusal] = {}

        async def attempt() -> aiohttp.ClientResponse:
            response = await self.request("POST", path, body=body, query=query, headers=headers)
            if response.status == 200:
                return response
            refusal = await self._refusal(response, attempts.model)
            refusals[id(refusal.error)] = refusal
            raise refusal.error

        try:
            return await attempts.arun(attempt)
        except UpstreamError as error:
            if id(error) in refusals:  # answered, not raised: its frames hold the refusal
                error.__traceback__ = None  # (a reference cycle each refused call)
                return refusals[id(error)]
            raise

    async def _refusal(self, response: aiohttp.ClientResponse, model: str) -> Refusal:
        try:
            answer = await self.read(response)
        except UpstreamError as broken:
            answer = json.dumps({"error": str(broken)}).encode()
            self.finish(response, completed=False)
        except BaseException:  # cancelled (the caller hung up): the connection is dropped now
            self.finish(response, completed=False)
            raise
        else:
            self.finish(response, completed=True)
        header = retry_after_passed(header_of(response, b"retry-after"))
        # A gateway in front of Ollama that refused the call itself: its words, no server's failure
        refused = header_of(response, REFUSED_HEADER.lower().encode())
        failure = (answer_error if refused is None else partial(gateway_refusal, refused))(
            response.status,
            detail_of(answer.decode(errors="replace")),
            host=self.host,
            model=model,
            retry_after=retry_after_seconds(header),
        )
        named = {
            name: value
            for name in (SPAN_HEADER, LEDGER_HEADER)
            if (value := header_of(response, name.lower().encode())) is not None
        }
        # A gateway recorded the call: sent again, it would be a call again in its ledger.
        failure.recorded = SPAN_HEADER in named
        return Refusal(failure, response.status, answer, content_type_of(response), header, named)

    async def read(self, response: aiohttp.ClientResponse, *, most: int | None = None) -> bytes:
        """The whole body; a transport failure, or more than ``most`` bytes (default
        :data:`MAX_ANSWER_BYTES`), is a classified error (the connection is then dropped
        by :meth:`finish`)."""
        limit = MAX_ANSWER_BYTES if most is None else most
        declared = response.content_length
        body = bytearray()
        try:
            if declared is None or declared <= limit:
                async with asyncio.timeout(self._item_s):
                    async for data in response.content.iter_any():
                        body += data
                        if len(body) > limit:
                            break
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._broken(exc) from exc
        if len(body) > limit or (declared or 0) > limit:
            raise transport_error(
                Failure.BROKEN,
                host=self.host,
                started=True,
                reason=f"an answer of more than {limit} bytes",
            )
        return bytes(body)

    async def head(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The whole body when it is at most :data:`MAX_ANSWER_BYTES`, and True; else the
        first bytes read past that, and False: the rest is for :meth:`chunks`. A transport
        failure is a classified error."""
        limit = MAX_ANSWER_BYTES
        body = bytearray()
        try:
            if (response.content_length or 0) <= limit:
                async with asyncio.timeout(self._item_s):
                    async for data in response.content.iter_any():
                        body += data
                        if len(body) > limit:
                            return bytes(body), False
                return bytes(body), True
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._broken(exc) from exc
        return b"", False

    async def chunks(self, response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; a transport failure is a classified error."""
        try:
            async for data in response.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if left := _unread(response.content):
                yield left  # what Ollama did send before it broke off is the client's too
            raise self._broken(exc) from exc

    async def items(
        self, response: aiohttp.ClientResponse, frames: Frames
    ) -> AsyncGenerator[list[bytes], None]:
        """The items ``frames`` cuts the body into, a batch for each piece that arrives; no
        item of the answer whole for the read timeout (bytes that end none, blank lines,
        keep-alive comments) is a timeout."""
        loop = asyncio.get_running_loop()
        chunks = self.chunks(response)
        since = loop.time()
        timer = asyncio.timeout(None)  # one for the reads, set before each: none meanwhile
        try:
            async with timer:
                while True:
                    timer.reschedule(since + self._item_s)
                    try:
                        data = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    timer.reschedule(None)
                    batch = frames.feed(data)
                    if any(frames.carries(frame) for frame in batch):
                        since = loop.time()
                    yield batch
        except TimeoutError as exc:
            if not timer.expired():
                raise
            raise self._broken(exc) from None
        finally:
            await chunks.aclose()  # when the reader stops first (an answer's end is read)

    def _broken(self, exc: BaseException) -> UpstreamError:
        kind = Failure.TIMEOUT if isinstance(exc, TimeoutError) else Failure.BROKEN
        return transport_error(kind, host=self.host, started=True, reason=_reason(exc))

    @staticmethod
    def finish(response: aiohttp.ClientResponse, *, completed: bool) -> None:
        """Hand the connection back when the body was read to the end; else drop it.

        Dropping the connection is what tells Ollama to stop generating.
        """
        if completed:
            response.release()
        else:
            response.close()

    async def aclose(self) -> None:
        for session in (self._session, self._once):
            if session is not None:
                await session.close()
        self._session = self._once = None

    def close(self) -> None:
        """Nothing to do outside the event loop: :meth:`aclose` closes the pool."""


def as_sent(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The answer's headers byte for byte, names in lower case, each as often as it came
    (``Set-Cookie`` twice is two cookies): so they are passed on as they came. aiohttp reads
    them as UTF-8, which a byte past ASCII (an accent, a stray byte) made text that no
    answer can carry."""
    return [(name.lower(), value) for name, value in response.raw_headers]


def header_of(response: aiohttp.ClientResponse, name: bytes) -> str | None:
    """The answer's header ``name`` (lower case) byte for byte, as Latin-1 text (which every
    byte is), as :func:`as_sent` passes it on; None when it is not there."""
    for key, value in response.raw_headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def content_type_of(response: aiohttp.ClientResponse) -> str | None:
    """The answer's ``Content-Type`` as it came: read as UTF-8, a byte past ASCII made text
    that no answer can carry (a 500)."""
    return header_of(response, b"content-type")


def gateway_status(error: UpstreamError) -> int:
    """What the gateway answers when Ollama could not be used: 504 if it was silent, else 502."""
    return 504 if isinstance(error, UpstreamTimeout) else 502


def _unread(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp received but had not handed over when the body broke off.

    Its ``readany`` raises a broken body's error before the bytes that arrived ahead of
    it, which would lose the last items Ollama did send (read late, a stream lost them
    all). aiohttp has no public way to read them, so its buffer is read, defensively:
    without one, nothing is recovered, as before.
    """
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    offset = getattr(content, "_buffer_offset", 0)
    return b"".join(bytes(piece) for piece in buffer)[offset:]


def _reason(exc: BaseException) -> str:
    """What went wrong, in the words of aiohttp's parser where it has any: its errors print
    as ``400, message: ...`` (a status nobody sent), wrapped in another's repr, and one it
    raised from a callback as "Span callback error in on_body" (the real one is its cause)."""
    said: list[str] = []
    seen: list[BaseException] = []
    ahead = [exc]
    while ahead and len(seen) < 8:
        error = ahead.pop(0)
        if any(error is old for old in seen):
            continue
        seen.append(error)
        if isinstance(error, ContentEncodingError):
            said.append(_UNDECODED)
        elif isinstance(error, HttpProcessingError) and error.message:
            text = " ".join(str(error.message).split())
            if text.startswith("Span callback error"):  # the decoder's, its cause not always kept
                text = _UNDECODED if isinstance(error, PayloadEncodingError) else ""
            said += [text] if text else []
        ahead += [a for a in error.args if isinstance(a, BaseException)]
        ahead += [e for e in (error.__cause__, error.__context__) if e is not None]
    return said[-1] if said else str(exc) or type(exc).__name__


_UNDECODED = "its body is not in the coding its Content-Encoding names"
