"""Turning whatever the ``ollama`` client or httpx raised into one classified UpstreamError."""

from __future__ import annotations

import json

import httpx
import ollama

from ollama_meter.errors import (
    ModelNotFound,
    RateLimited,
    StreamError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)


def classify(exc: BaseException, *, host: str, model: str, started: bool) -> UpstreamError:
    """The UpstreamError that says, in one line, what went wrong and what to do.

    ``started`` tells whether the response had begun streaming: a failure after
    that point is a broken stream, whatever the transport said.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        return _from_response(exc, host=host, model=model)
    if isinstance(exc, httpx.TimeoutException):
        what = "stopped answering mid-stream" if started else "did not answer in time"
        return UpstreamTimeout(
            f"Ollama at {host} {what}; raise OMETER_UPSTREAM_TIMEOUT or check the server's load"
        )
    if started and isinstance(exc, httpx.HTTPError | json.JSONDecodeError):
        return StreamError(f"the stream from Ollama at {host} broke off: {_reason(exc)}")
    if isinstance(exc, ConnectionError | httpx.TransportError):
        return UpstreamConnectionError(
            f"cannot reach Ollama at {host}: is it running? Set OLLAMA_HOST to its address"
        )
    return UpstreamError(f"unexpected failure calling Ollama at {host}: {_reason(exc)}")


def _from_response(exc: ollama.ResponseError, *, host: str, model: str) -> UpstreamError:
    status = exc.status_code
    detail = error_text(exc.error)
    if status == -1:  # an {"error": ...} line inside a 200 stream
        return StreamError(f"Ollama failed mid-stream: {detail}")
    lowered = detail.lower()
    if status == 404 and "model" in lowered and "not found" in lowered:
        return ModelNotFound(
            f"model {model!r} is not available on {host} ({detail}); "
            f"pull it with `ollama pull {model}` or pick one from `ollama list`",
            status_code=status,
        )
    if status == 429:
        return RateLimited(
            f"Ollama at {host} is rate limiting (HTTP 429): {detail}", status_code=status
        )
    if status == 404:  # Ollama's "404 page not found": no such route, whatever the model
        return UpstreamBadRequest(
            f"Ollama has no such endpoint (HTTP 404: {detail}); check the URL path",
            status_code=status,
        )
    if 400 <= status < 500:
        return UpstreamBadRequest(
            f"Ollama refused the request (HTTP {status}): {detail}", status_code=status
        )
    if status >= 500:
        return UpstreamServerError(
            f"Ollama at {host} failed (HTTP {status}): {detail}", status_code=status
        )
    return UpstreamError(f"Ollama answered HTTP {status}: {detail}", status_code=status)


def error_text(value: object) -> str:
    """The message of an error as Ollama sends it: a string, or OpenAI's ``{"message": ...}``."""
    if isinstance(value, dict):
        message = value.get("message")
        if isinstance(message, str):
            return message.strip()
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
