"""A whole (non-streamed) answer read into its call: held whole, or, too large to hold (an
embedding batch), relayed to the client as it arrives.

The large one is read as it passes (:class:`~ollama_meter.upstream._answer.AnswerScan`),
so the gateway's memory is bounded whatever the answer's size, and metered as exactly as
an answer read whole; its last bytes are held until its span is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from ollama_meter.errors import UpstreamError
from ollama_meter.gateway._slots import Hangup, Heard
from ollama_meter.upstream._answer import AnswerScan
from ollama_meter.upstream._classify import not_an_answer, unreadable
from ollama_meter.upstream._wire import json_object, lacks

if TYPE_CHECKING:
    from ollama_meter.gateway._relay import _Answered

_log = logging.getLogger("ollama_meter.gateway")

PIECE = 1 << 20
"""The answer's first bytes (up to 64 MiB, read before it was known to be large) are parsed
and sent a MiB at a time, so other calls on the event loop are not held up for a second."""


def json_value(content: bytes) -> dict[str, Any] | None:
    """The JSON object in a whole answer, read as a stream's line is (``json_object``); None
    when it is not one, or not one a client could read (NaN, UTF-16...): never taken as an
    answer here while the same object streamed would break the stream."""
    return json_object(content)


def _as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def failure_of(answered: _Answered, answer: Any) -> UpstreamError | None:
    """Read a whole answer (decoded, or its members) into the call; the failure it reports."""
    operation = answered.request.operation
    reader = answered.wire.reader(operation)
    failure = answered.call.take([*reader.read(_as_object(answer)), *reader.finish()])
    if failure is None and answer is None:  # as a stream's item that is not one (the relay)
        failure = unreadable(answered.pool.host, "the body is not a JSON object")
    elif failure is None and (missing := lacks(operation, answer)) is not None:
        failure = not_an_answer(answered.pool.host, missing)  # never relayed as if it were one
    return failure


HELD_WHOLE = 1 << 16
"""An answer held whole up to this size is written at once (the transport's high-water mark):
nothing can be heard of its caller between two parts of it, so it goes in one write."""


class Whole(Response):
    """A whole answer held in memory, sent with its length; its last byte only once its span is
    written, as a stream's last item is. A caller that has hung up by then (it read part of a
    large answer and left) makes the call a ``client_abort``, charged what Ollama reported:
    never ``ok`` for an answer it did not have."""

    def __init__(
        self, answered: _Answered, content: bytes, hangup: Hangup | None, *, media_type: str
    ) -> None:
        super().__init__(content, status_code=200, media_type=media_type)
        self._answered, self._hangup = answered, hangup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        heard = Heard(self._hangup)
        body, ended = bytes(self.body), False
        held = 1 if len(body) > HELD_WHOLE else len(body)  # what goes after the span is written
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if held < len(body):
                more = {"type": "http.response.body", "more_body": True}
                await send({**more, "body": body[:-held]})
                # Nothing: a server waits, before it writes, while the caller takes what was
                # written (uvicorn), or until the caller leaves.
                await send({**more, "body": b""})
            outcome = await heard.ending()
            ended = True
            await self._answered.end(outcome)
            if outcome is None:
                await send({"type": "http.response.body", "body": body[-held:]})
        except BaseException as exc:  # cancelled as it was sent: the caller hung up
            if not ended:
                await self._answered.end(exc)
            raise
        finally:
            heard.close()


class Cut(Exception):
    """A relayed whole answer that is not one: the connection to the client is cut before
    its end, so the client cannot take it for a whole answer."""


class Relayed(StreamingResponse):
    """A whole answer relayed as it arrives (:func:`relayed`), with no length.

    However the response ends, the relay is closed (Starlette leaves it suspended when its
    caller leaves mid-way): its read of Ollama is closed and its span written now, not by the
    event loop's finalizer. A relay that never ran (its caller gone before the first byte)
    ends its call all the same, as an abort: no call is left open for want of it.
    """

    def __init__(
        self, answered: _Answered, head: bytes, hangup: Hangup | None, *, media_type: str
    ) -> None:
        self._answered = answered
        self._relay = relayed(answered, head, hangup)
        super().__init__(self._relay, media_type=media_type)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Cut as cut:  # the response is left unfinished: the server cuts the connection
            _log.warning("a whole answer from Ollama was cut off before its end: %s", cut)
        finally:
            await self._relay.aclose()
            await _unrelayed(self._answered)


async def _unrelayed(answered: _Answered) -> None:
    """End a call whose relay never ran: an abort, charged what Ollama did (its whole answer
    had come, as :func:`relayed` charges one cut short), its connection dropped. Nothing for
    a call the relay ended: its connection is finished, its outcome counted and its span
    closed once, whoever asks again."""
    answered.pool.finish(answered.response, completed=answered.response.content.at_eof())
    answered.call.answered()  # only a time for its measure, which a call closed took already
    await answered.end(asyncio.CancelledError())


async def relayed(
    answered: _Answered, head: bytes, hangup: Hangup | None = None
) -> AsyncGenerator[bytes, None]:
    """A whole answer too large to hold, relayed as it arrives and read as it passes
    (:class:`AnswerScan`); its last bytes are held until its span is written.

    An answer that turns out not to be one (not JSON, an error, broken off) cannot
    become a 502 once its first bytes went: its last bytes are not sent and the
    connection is cut (:class:`Cut`), so the client fails to read it, as it would
    read it from Ollama. A caller that has hung up (``hangup`` returns) is sent nothing
    more: its call is an abort, never ok.
    """
    call, response, pool = answered.call, answered.response, answered.pool
    scan = AnswerScan(answered.request.operation, host=pool.host)
    chunks = pool.chunks(response)
    deadline = call.deadline()
    heard = Heard(hangup)
    closed = False
    held = b""
    """The last byte that came (and white space after it), sent only once the span is written:
    the client waits on no more than that, and never has a whole answer before its span is
    in the ledger, nor one the span says is none."""
    pieces = (head[start : start + PIECE] for start in range(0, len(head), PIECE))
    try:
        data = b""
        while True:
            scan.feed(data)
            if scan.broken:  # not JSON: nothing more of it goes
                break
            last = len(data.rstrip()) - 1  # the last byte that is not white space
            if last < 0:
                held += data
            else:
                sent, held = held + data[:last], data[last:]
                if sent:
                    yield sent
            if heard.gone:  # what it was sent went nowhere
                break
            if data := next(pieces, b""):
                await asyncio.sleep(0)  # the event loop's other calls have their turn
                continue
            try:
                async with call.in_time(deadline):
                    data = await anext(chunks)
            except StopAsyncIteration:
                break
        if heard.gone or await heard.left():  # nobody there to take (the rest of) it
            closed = True
            call.answered()
            await answered.end(asyncio.CancelledError())
            return
        answer = scan.end()
        failure = failure_of(answered, answer)
        closed = True
        await answered.end(failure)
        if failure is not None:
            raise Cut(str(failure))
        yield held
    except UpstreamError as error:  # broke off, went silent, or a value past any bound
        if not closed:
            closed = True
            call.answered()  # a 200 whole answer: the work was done
            await answered.end(error)
        raise Cut(str(error)) from None
    except BaseException as exc:  # the client hung up (or the server is stopping)
        if not closed:
            closed = True
            call.answered()
            await answered.end(exc)
        raise
    finally:
        heard.close()
        pool.finish(response, completed=response.content.at_eof())
        await chunks.aclose()  # stopped before its end (not JSON, the caller gone, an error)
