"""What the ``ollama`` client's exceptions say: a request it refused to build, a server that
said nothing, a failure an answer reports, a header of the answer, all on one line."""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx
import ollama
import pydantic

from ollama_meter.errors import UpstreamError
from ollama_meter.upstream._classify import reported_error, retry_after_seconds


def refused_by_client(exc: BaseException) -> bool:
    """Whether the client library refused to build the request from the arguments it was given.

    It checks them (pydantic models named for the request and its parts) before sending;
    an answer it cannot read fails on a model named ``...Response``, which is Ollama's doing.
    """
    if isinstance(exc, pydantic.ValidationError):
        return not exc.title.endswith("Response")
    # a value nested too deep to encode: the ollama client raises RecursionError before sending
    return isinstance(exc, ollama.RequestError | TypeError | RecursionError) or (
        isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError)
    )


def said_nothing(exc: httpx.RemoteProtocolError) -> bool:
    """Whether the server closed the connection before a byte of its answer could be read
    (httpcore's words for it): nothing answered, as when it is not there at all."""
    return "without sending a response" in str(exc)


def reported_in(exc: BaseException) -> UpstreamError | None:
    """The failure a 200's object reports (``{"error": ...}``), when the client could not read
    it as an answer: it checks the fields an answer has first, so the error went unsaid."""
    if not (isinstance(exc, pydantic.ValidationError) and exc.title.endswith("Response")):
        return None
    for error in exc.errors(include_url=False):
        answer = error.get("input")
        if error["type"] == "missing" and not error["loc"][1:] and isinstance(answer, Mapping):
            return reported_error(answer)
    return None


def one_line(exc: BaseException) -> str:
    """What the client library said, on one line: ``Message.content: Input should be ...``."""
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join((exc.title, *map(str, error['loc'])))}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    if isinstance(exc, ollama.RequestError):
        return exc.error
    return str(exc) or type(exc).__name__


def retry_after_of(exc: ollama.ResponseError) -> float | None:
    return retry_after_seconds(header_of_error(exc, "retry-after"))


def header_of_error(exc: ollama.ResponseError, name: str) -> str | None:
    """A header of the answer: the client raises from httpx's error, which has them."""
    cause = exc.__context__
    if isinstance(cause, httpx.HTTPStatusError):
        value: str | None = cause.response.headers.get(name)
        return value
    return None
