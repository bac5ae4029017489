"""The one classifier: what went wrong with a call to Ollama, as one UpstreamError with one message.

Every transport reduces what its client library raised to one of three things
and asks here for the error:

- an answer that is not a success: its HTTP status and body (:func:`answer_error`);
- no usable answer at all: nothing reachable, silence, or a body that broke off
  (:func:`transport_error`, with a :class:`Failure`);
- a failure the answer reports inside a 200 (:func:`reported_error`).

So the CLI, the Python API and the gateway say the same thing about the same
failure, and ``error_type`` is decided in one place. Imports no client library.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from ollama_meter._causes import chain
from ollama_meter._text import one_line
from ollama_meter.errors import (
    GatewayBudgetExceeded,
    InvalidRequest,
    ModelNotFound,
    NoConnectionFree,
    RateLimited,
    ServerBusy,
    StreamError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)


class Failure(StrEnum):
    """How a call got no usable answer, in the terms of no particular client library."""

    CONNECTION = "connection"
    """Nothing answered at the address: the connect was refused, or never answered."""
    TIMEOUT = "timeout"
    """Something listens there, but said nothing in time."""
    BROKEN = "broken"
    """The answer began, then broke off (a dropped connection, a line that is not JSON)."""
    GARBLED = "garbled"
    """Something answered, in bytes that are no HTTP answer: the call was taken, so it is
    not sent again, nor the server said to be unreachable."""
    INVALID = "invalid"
    """The client library refused to build the request from what it was given: nothing was sent."""
    UNEXPECTED = "unexpected"
    """Anything else the client library raised."""


SET_HOST = "Set OLLAMA_HOST to its address"
"""What to do about an Ollama nobody answers at, said to whoever set its address: the user of
the CLI or the Python API. A gateway's callers are told :data:`GATEWAYS_HOST` instead."""
GATEWAYS_HOST = "The gateway's --upstream, OMETER_UPSTREAMS or OLLAMA_HOST names it"
"""The same, said to a gateway's callers: their own OLLAMA_HOST points at the gateway as it
should (told to set it to Ollama's address, they would take their calls past the meter)."""


def transport_error(
    kind: Failure, *, host: str, started: bool, reason: str = "", hint: str = SET_HOST
) -> UpstreamError:
    """The error for a call that got no usable answer.

    ``started`` tells whether the answer had begun arriving: after that point a
    failure is a broken stream, whatever the transport said. ``hint``: where the address of
    an Ollama that cannot be reached is set (:data:`SET_HOST`, :data:`GATEWAYS_HOST`).
    """
    if kind is Failure.TIMEOUT:
        what = "stopped answering mid-stream" if started else "did not answer in time"
        return UpstreamTimeout(
            f"Ollama at {host} {what}; raise OMETER_UPSTREAM_TIMEOUT or check the server's load"
        )
    if kind is Failure.GARBLED:
        return StreamError(f"the answer from Ollama at {host} is not an HTTP answer: {reason}")
    if kind is Failure.BROKEN or (started and kind is Failure.CONNECTION):
        return StreamError(f"the stream from Ollama at {host} broke off: {reason or 'no reason'}")
    if kind is Failure.INVALID:
        return InvalidRequest(f"the request is malformed, so it was not sent to Ollama: {reason}")
    if kind is Failure.CONNECTION:
        why = f" ({reason})" if reason else ""
        return UpstreamConnectionError(f"cannot reach Ollama at {host}{why}: is it running? {hint}")
    return UpstreamError(f"unexpected failure calling Ollama at {host}: {reason}")


_OUT_OF = {
    errno.EMFILE: "open files (its limit: ulimit -n, systemd LimitNOFILE=)",
    errno.ENFILE: "open files (the whole machine's)",
    errno.ENOBUFS: "network buffers",
    errno.ENOMEM: "memory",
}


def out_of_resources(exc: BaseException, *, host: str) -> ServerBusy | None:
    """The error for a call this process could not make for want of its own resources
    (no file descriptor left for the connection): the gateway's trouble, not Ollama's.

    It is no "cannot reach Ollama" (retried, then counted against the server's breaker, so a
    healthy Ollama was refused to everyone); nothing was sent. None for any other failure.
    """
    for cause in chain(exc, _held):
        code = getattr(cause, "errno", None)
        if isinstance(cause, OSError) and code in _OUT_OF:
            busy = ServerBusy(
                f"this process ran out of {_OUT_OF[code]} calling Ollama at {host}; nothing "
                "was sent: retry shortly",
                retry_after=1,
            )
            busy.reached_upstream = False  # its breaker neither fails nor recovers by it
            return busy
    return None


def no_connection_free(host: str) -> NoConnectionFree:
    """The error for a call that waited its time for one of its client's own connections to
    Ollama, every one held (a stream read part-way and kept holds its own): never sent."""
    return NoConnectionFree(
        f"every connection this client may open to Ollama at {host} is in use (streams read "
        "part-way and not closed hold theirs) and none came free in time; nothing was sent: "
        "read those streams to the end or close() them, or allow more connections with "
        "limits=httpx.Limits(max_connections=...)"
    )


def no_connection(
    exc: BaseException, *, host: str, reason: str = "", hint: str = SET_HOST
) -> UpstreamError:
    """The error for a call that got no connection to Ollama, ``exc`` what the client library
    raised: this process out of resources (:func:`out_of_resources`), a server that answered
    a TLS handshake in plain HTTP, else Ollama not reachable."""
    if busy := out_of_resources(exc, host=host):
        return busy
    if host.startswith("https://") and any(map(_plain_http, chain(exc, _held))):
        # It said "cannot reach Ollama: is it running?": it is running, and it answered.
        address = host.removeprefix("https://")
        return UpstreamConnectionError(
            f"the server at {address} answered plain HTTP to a TLS connection: use "
            f"http://{address}, not https://"
        )
    said = unreached(exc, host) or reason
    return transport_error(Failure.CONNECTION, host=host, started=False, reason=said, hint=hint)


def hung_up(host: str, reason: str) -> UpstreamConnectionError:
    """The error for a call whose connection the server took, then closed before a byte of an
    answer (``reason``: the client library's words). Not "cannot reach Ollama: is it
    running?": something is running there, and it took the connection."""
    return UpstreamConnectionError(
        f"Ollama at {host} closed the connection without answering ({reason}): it is reachable, "
        "but it (or a proxy before it) dropped the call; check its log for a crash or restart"
    )


def unreached(exc: BaseException, host: str) -> str | None:
    """Why a connect to ``host`` failed, plainly: its address and the system's reason
    (``127.0.0.1:9: Connection refused``), or the TLS library's. None when ``exc`` holds none.

    Each client library words it its own way: aiohttp as ``Cannot connect to host 127.0.0.1:9
    ssl:default [Connect call failed ('127.0.0.1', 9)]`` (its TLS setting, named for plain
    http too, and asyncio's words), the ollama SDK's httpx as ``All connection attempts
    failed``. Spans, callers' answers and the gateway's log all say this instead.
    """
    causes = list(chain(exc, _held))
    # The innermost TLS error (aiohttp's own wrapper is one too) in OpenSSL's words: its
    # errno is OpenSSL's (1), not the system's EPERM.
    said = next((one_line(str(c)) for c in causes[::-1] if isinstance(c, ssl.SSLError)), None)
    if said is None:
        said = next(filter(None, map(_system_reason, causes)), None)
    return None if said is None else f"{_address(host)}: {said}"


_ERRNO = re.compile(r"\[Errno (\d+)\]")


def _system_reason(cause: BaseException) -> str | None:
    """The system's words for a failed connect: ``Connection refused``, not asyncio's
    ``Connect call failed ('127.0.0.1', 9)``, also when each address of a name failed alike
    (asyncio's ``Multiple exceptions: [Errno 111] ...``); a name's that did not resolve."""
    if not isinstance(cause, OSError):
        return None
    if isinstance(cause, socket.gaierror) and cause.strerror:
        return cause.strerror
    if isinstance(cause.errno, int) and cause.errno > 0:
        return os.strerror(cause.errno)
    codes = set(_ERRNO.findall(str(cause)))
    return os.strerror(int(codes.pop())) if len(codes) == 1 else None


def _address(host: str) -> str:
    """``host:port`` of an upstream's URL (no user or password it may hold)."""
    parts = urlsplit(host)
    name = parts.hostname or host
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return name
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


_PLAIN_HTTP = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")
"""How OpenSSL fails a handshake whose answer is HTTP's ``HTTP/1.1 400`` read as a TLS record
(``RECORD_LAYER_FAILURE`` from OpenSSL 3.2 on)."""


def _plain_http(cause: BaseException) -> bool:
    if not isinstance(cause, ssl.SSLError):
        return False
    said = str(cause).lower()
    return getattr(cause, "reason", None) in _PLAIN_HTTP or any(
        reason.replace("_", " ").lower() in said for reason in _PLAIN_HTTP
    )


def _held(cause: BaseException) -> BaseException | None:
    inner = getattr(cause, "os_error", None)  # aiohttp's connector error keeps it here
    return inner if isinstance(inner, BaseException) else None


def unreadable(host: str, reason: str) -> StreamError:
    """An answer, or an item of a stream, that came (a 200) and does not read as the API has
    it: not JSON, not an object, not UTF-8, a field of the wrong type. A broken stream, for
    the gateway's relay and the Python API's client alike; Ollama did the work."""
    return StreamError(
        f"the answer from Ollama at {host} does not read as Ollama's API has it: {reason}"
    )


def unfinished_error(host: str) -> StreamError:
    """A stream that ended cleanly but never said it was done."""
    return StreamError(f"the stream from Ollama at {host} ended without its final chunk")


def not_an_answer(host: str, what: str) -> StreamError:
    """A 200 whose body is not the answer the call asked for (``what``: what it lacks)."""
    return StreamError(f"the answer from Ollama at {host} is not an answer: {what}")


_CALLERS_FAULT = re.compile(
    r'option ".*" must be of |invalid format: |invalid JSON schema in format|template: '
    r"|(?:llm predict error: )?Failed to create new sequence: "
)
"""How Ollama refuses a request for its own fault in a 500, not a 400: an option of the wrong
type (``Options.FromMap``), a ``format`` that is neither ``"json"`` nor a schema it can make a
grammar of, a template that does not parse or run (a generate's own ``template``), a sequence
the runner cannot make of the request (an image of no bytes or none it can read, a prompt past
the context it may not cut, a pattern in the schema it cannot sample by). The same
request fails the same way every time: no retry mends it, and counted by the model's circuit,
three of them from one caller failed every other caller of the model for a minute."""


SAID_MOST = 300
"""The most characters of an error body an error message repeats."""
MODEL_SAID_MOST = 100
"""The most characters of a model's name an error message repeats (it may say it twice)."""


def _brief(text: str, most: int) -> str:
    """``text`` on one line (a model's name or Ollama's words may hold a newline or an escape
    sequence), cut to ``most`` characters."""
    if len(text) <= most:
        return one_line(text)
    return f"{one_line(text[:most])}... ({len(text):,} characters)"


def answer_error(
    status: int,
    detail: str,
    *,
    host: str,
    model: str,
    retry_after: float | None = None,
    location: str | None = None,
) -> UpstreamError:
    """The error for an answer with HTTP ``status``; ``detail`` is what its body says (:func:`detail_of`).

    Both ``detail`` and ``model`` may be any length (an error body, a name the caller
    gave): each is said in at most :data:`SAID_MOST` characters, so the error stays a line."""
    lowered = detail.lower()
    detail, model = _brief(detail, SAID_MOST), _brief(model, MODEL_SAID_MOST)
    if status == 404 and "model" in lowered and "not found" in lowered:
        return ModelNotFound(
            f"model '{model}' is not available on {host} ({detail}); "
            f"pull it with `ollama pull {model}` or pick one from `ollama list`",
            status_code=status,
        )
    if status == 429:
        return RateLimited(
            f"Ollama at {host} is rate limiting (HTTP 429): {detail}",
            status_code=status,
            retry_after=retry_after,
        )
    if status == 404:  # Ollama's "404 page not found": no such route, whatever the model
        return UpstreamBadRequest(
            f"Ollama has no such endpoint (HTTP 404: {detail}); check the URL path",
            status_code=status,
        )
    # Ollama answers some of a request's own mistakes (``num_predict: "ten"``, a bad
    # ``format``) with a 500: the same every time; no retry mends it, no circuit counts it.
    if 400 <= status < 500 or (status == 500 and _CALLERS_FAULT.match(detail)):
        return UpstreamBadRequest(
            f"Ollama refused the request (HTTP {status}): {detail}", status_code=status
        )
    if status >= 500:
        return UpstreamServerError(
            f"Ollama at {host} failed (HTTP {status}): {detail}",
            status_code=status,
            retry_after=retry_after,
        )
    # A redirect, or a success other than 200 (a proxy in between?): not an answer either.
    if 300 <= status < 400 and location:  # followed, it went elsewhere (a POST as a GET)
        return UpstreamError(
            f"Ollama at {host} answered HTTP {status}, which is not an answer: it redirects "
            f"to {location[:200]!r}: set OLLAMA_HOST to the server it points to",
            status_code=status,
        )
    return UpstreamError(
        f"Ollama at {host} answered HTTP {status}, which is not an answer: {detail or 'no body'}",
        status_code=status,
    )


def gateway_refusal(
    kind: str,
    status: int,
    detail: str,
    *,
    host: str,
    model: str,
    retry_after: float | None = None,
) -> UpstreamError:
    """The error for a call the gateway at ``host`` refused itself (``X-Ometer-Refused:
    kind``: its hard budget, its rate limit, its keys): never sent to Ollama, so no server's
    circuit counts it; a budget's refusal is :class:`GatewayBudgetExceeded`, never retried.
    Any other kind is classified by its status, as Ollama's answer would be, in words that
    say who refused it."""
    said = f"the gateway at {host} refused the call (HTTP {status}): {_brief(detail, SAID_MOST)}"
    error: UpstreamError
    if kind == GatewayBudgetExceeded.error_type:
        error = GatewayBudgetExceeded(said, status_code=status, retry_after=retry_after)
    else:
        error = answer_error(status, detail, host=host, model=model, retry_after=retry_after)
        error.args = (said,)
    error.reached_upstream = False
    return error


def reported_error(obj: Mapping[str, Any] | Any) -> UpstreamError | None:
    """The failure an object in a 200 answer reports (``error``, or ``done_reason: "error"``).

    One rule for every wire format and transport; None when the object reports none.
    """
    error = obj.get("error")
    if error is None and obj.get("done_reason") != "error":
        return None
    return mid_stream_error(error_text(error or "the answer ended with done_reason 'error'"))


def mid_stream_error(detail: str) -> UpstreamError:
    """A failure Ollama reported in a 200 answer (an ``{"error": ...}`` line or object), streamed or whole.

    The request's own fault (:data:`_CALLERS_FAULT`) is that wherever it is said: a thinking
    model's streamed chat runs first without its ``format``, and Ollama asks for the grammar
    only once the thinking is sent, so a schema it cannot read is refused inside the 200, in
    the words of the 500 it is otherwise. Read as the stream breaking, three such calls from
    one caller opened the model's circuit for every other caller."""
    if _CALLERS_FAULT.match(detail):
        return UpstreamBadRequest(f"Ollama refused the request after it began answering: {detail}")
    return StreamError(f"Ollama failed while answering: {detail}")


def detail_of(body: str) -> str:
    """What an error answer's body says: its ``error`` (Ollama's or OpenAI's shape), else the text."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body.strip()
    if isinstance(parsed, dict) and "error" in parsed:
        return error_text(parsed["error"])
    return body.strip()


def error_text(value: object) -> str:
    """The message of an error as Ollama sends it: a string, or OpenAI's ``{"message": ...}``."""
    if isinstance(value, dict):
        message = value.get("message")
        if isinstance(message, str):
            return message.strip()
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date; None if neither.

    Any number of digits is a number (``inf`` past what a float holds): an upstream may lie.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        return float(digits) if len(digits) <= 300 else math.inf
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


_FRACTION = re.compile(r"[0-9]{1,300}\.[0-9]{0,300}")


def retry_after_passed(value: str | None) -> str | None:
    """An upstream's ``Retry-After`` as the gateway passes it on: whole seconds or an HTTP date
    as they came, seconds with a fraction (some proxies send them) rounded up, never sooner;
    None for anything else (``-5``, ``abc``), which each client read as it pleased."""
    if value is None:
        return None
    text = value.strip()
    if _FRACTION.fullmatch(text):
        return str(math.ceil(Decimal(text)))
    return text if retry_after_seconds(text) is not None else None
