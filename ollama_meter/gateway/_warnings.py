"""uvicorn's warnings about what callers send, at a rate no caller sets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ollama_meter._logging import Throttled


class _ThrottledWarnings:
    """uvicorn's connection logger, its warnings at most a line per message every 10 s.

    uvicorn warns once per request it cannot parse and twice per ``Upgrade: websocket``,
    so anyone who reaches the port would write the log at the rate they open connections.
    """

    _throttle = Throttled(logging.getLogger("uvicorn.error"))  # shared by every connection

    def __init__(self, logger: logging.Logger, quiet: Callable[[], bool] = lambda: False) -> None:
        self._logger = logger
        self._quiet = quiet  # while the parser was stopped on purpose: nothing was invalid

    def __getattr__(self, name: str) -> Any:  # level, log, debug...: as they are
        return getattr(self._logger, name)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self._quiet():
            return
        more = self._throttle.more(msg)
        if more is not None:
            self._logger.warning(msg + more.replace("%", "%%"), *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """uvicorn's line for an answer the app ended early (an upstream's broken off, passed
        on cut so the client sees it) is throttled too; an error with a traceback is not."""
        if args or kwargs:
            self._logger.error(msg, *args, **kwargs)
            return
        more = self._throttle.more(msg)
        if more is not None:
            self._logger.error(msg + more.replace("%", "%%"))
