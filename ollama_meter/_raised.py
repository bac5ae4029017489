"""What the Python API raises, as the ``ollama`` client raises it: ometer's error, caught too by
the ``except`` clauses written for that client.

``errors`` stays free of the ``ollama`` package (the CLI imports it, and ``ollama`` is heavy),
so the error a call raises is made its twin here, at the client's door: the same name,
message, attributes (``span_id``) and traceback, now also an ``ollama.ResponseError`` with Ollama's
``status_code`` and ``error``, or a built-in ``ConnectionError`` / ``TimeoutError`` where the
``ollama`` client raises those (``httpx``'s timeouts are not ``TimeoutError``s; ours are both);
and where the ``ollama`` client let httpx's own error through (``httpx.ReadTimeout``, an answer
cut off: ``httpx.RemoteProtocolError``), that error's class too, with its ``request``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import ollama

from ollama_meter.errors import (
    BudgetExceeded,
    InvalidRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)

Failure = UpstreamError | BudgetExceeded
"""What the ``ollama`` client's callers catch as its own: Ollama's failures, and a hard
budget's refusal (the gateway answers those clients 429, ``ollama.ResponseError``)."""

_TWINS: dict[tuple[type[Failure], type[Exception] | None], type[Failure]] = {}
_MAKING = threading.Lock()


def _builtin(cls: type[Failure]) -> type[Exception]:
    if issubclass(cls, UpstreamConnectionError):
        return ConnectionError
    if issubclass(cls, UpstreamTimeout):
        return TimeoutError
    return ollama.ResponseError


def _twin(cls: type[Failure], let: type[Exception] | None = None) -> type[Failure]:
    """``cls``'s twin; ``let``: the httpx error's class the ``ollama`` client let through."""
    with _MAKING:
        twin = _TWINS.get((cls, let))
        if twin is None:
            # Named as ``cls`` (a traceback, a log, an error tracker's grouping say ModelNotFound
            # as before); ``__str__`` stays ours, where ResponseError's adds "(status code: ...)"
            body = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__str__": cls.__str__,
                "__reduce__": _reduce,
            }
            bases = (cls, _builtin(cls), *([let] if let is not None else []))
            twin = _TWINS[(cls, let)] = type(cls.__name__, bases, body)
        return twin


def _let(error: BaseException) -> type[Exception] | None:
    """The class of the httpx error behind ``error`` that the ``ollama`` client lets through
    as it is (a timeout, an answer cut off); None for one it raises as its own (it makes
    httpx's ``ConnectError`` a ``ConnectionError``, a status a ``ResponseError``)."""
    cause = error.__cause__
    if isinstance(cause, httpx.TransportError) and not isinstance(cause, httpx.ConnectError):
        return type(cause)
    return None


def _reduce(error: BaseException) -> tuple[Any, ...]:
    """Pickled (to another process, say) as the original class's error, made its twin again."""
    bases = type(error).__bases__
    let = bases[2] if len(bases) > 2 else None
    return (_made, (bases[0], error.args, dict(error.__dict__), let))


def _made(
    cls: type[Failure],
    args: tuple[Any, ...],
    state: dict[str, Any],
    let: type[Exception] | None = None,
) -> BaseException:
    twin = _twin(cls, let)
    made = twin.__new__(twin, *args)
    made.args = args  # OSError's __new__ leaves them to an __init__ we do not run
    made.__dict__.update(state)
    return made


def as_ollamas(error: BaseException) -> BaseException:
    """``error``, when Ollama's failure, as the twin of its class that the ``ollama`` client's
    handlers catch (the same message, attributes and traceback); anything else as it is (a
    refusal never sent is a ValueError already). Raise it ``from error.__cause__``."""
    if not isinstance(error, Failure) or isinstance(error, InvalidRequest):
        return error
    if type(error) in _TWINS.values():
        return error
    let = _let(error)
    made = _made(type(error), error.args, error.__dict__, let)
    if let is not None:  # its request, as httpx set it (``error.request.url``)
        made._request = getattr(error.__cause__, "_request", None)  # type: ignore[attr-defined]
    if isinstance(made, ollama.ResponseError):
        made.error = str(error)
        if isinstance(made, BudgetExceeded):
            made.status_code = 429  # as the gateway answers it
        elif made.status_code is None:  # said inside a 200 stream: the ollama client's -1
            made.status_code = -1
    return made.with_traceback(error.__traceback__)


@contextlib.contextmanager
def raised_as_ollamas() -> Iterator[None]:
    """Ollama's failures inside, raised as :func:`as_ollamas` makes them."""
    try:
        yield
    except (UpstreamError, BudgetExceeded) as exc:
        made = as_ollamas(exc)
        if made is exc:
            raise
        raise made from exc.__cause__
