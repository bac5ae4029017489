"""An exception's chain, walked once for every reader of why a call failed."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def chain(
    exc: BaseException, held: Callable[[BaseException], BaseException | None]
) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, down the chain, each once.

    ``held``: the error a library keeps inside its own (aiohttp's ``os_error``, urllib3's
    ``reason``), followed before ``__cause__`` and ``__context__``.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = held(cause) or cause.__cause__ or cause.__context__
