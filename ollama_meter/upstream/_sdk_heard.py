"""The ``ollama`` clients' event hooks: what each attempt of a call sends and hears.

Each attempt of a call sets, in the context it runs in (where the clients run their hooks),
whether Ollama answered it (:data:`ANSWERED`) and the call's :class:`Heard`: the request hook
adds the call's headers, the response hook notes what the answer said of the call's record.
"""

from __future__ import annotations

from contextvars import ContextVar

import httpx

from ollama_meter.upstream._recorded import Heard
from ollama_meter.upstream._sdk_time import paced, waits

ANSWERED: ContextVar[bool] = ContextVar("ometer_answered", default=False)
"""Whether Ollama answered the attempt running in this context: set by the clients'
response hook, so a failure after it is never read as the client refusing the request."""
_HEARD: ContextVar[Heard | None] = ContextVar("ometer_heard", default=None)
"""The call whose attempt runs in this context: what it sends, what its answer says."""


def attempting(heard: Heard | None) -> None:
    """An attempt begins in this context: nothing answered it yet."""
    ANSWERED.set(False)
    _HEARD.set(heard)
    if heard is not None:
        heard.attempt()
        heard.delivered = False


def delivered() -> None:
    """The request of the attempt in this context was sent whole (httpcore's trace says so)."""
    heard = _HEARD.get()
    if heard is not None:
        heard.delivered = True


def sent_whole() -> bool:
    """Whether the request of the attempt in this context was sent whole and not refused."""
    heard = _HEARD.get()
    return heard is not None and heard.delivered


def _sends(request: httpx.Request) -> None:
    heard = _HEARD.get()
    if heard is not None and heard.sends:
        request.headers.update(httpx.Headers(heard.sends, encoding="utf-8"))
        if not all(map(str.isascii, heard.sends.values())):  # long tags (TAGS_LINE_BYTES)
            request.headers.encoding = "utf-8"  # read back as sent, not as ASCII


def on_request(request: httpx.Request) -> None:
    waits(request)
    _sends(request)


async def aon_request(request: httpx.Request) -> None:
    _sends(request)


def on_response(response: httpx.Response) -> None:
    ANSWERED.set(True)
    paced(response)
    said = _HEARD.get()
    if said is not None:
        said.heard(response.headers)
        said.delivered = said.delivered and response.status_code < 400  # refused: no work


async def aon_response(response: httpx.Response) -> None:
    on_response(response)
