"""Logging set-up for the command line: text or one JSON object per line.

The package itself only logs through ``logging``; applications that import it
keep their own configuration. ``ometer`` calls :func:`configure_logging` once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ollama_meter._forks import ChildLock
from ollama_meter._text import json_text, one_line
from ollama_meter.errors import OmeterError

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra}`` per record, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json_text(data, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, the message on one line with its control characters
    escaped (:func:`~ollama_meter._text.one_line`): what it quotes (a mail server's reply,
    an exception's text) can neither forge a line nor recolour the terminal. A traceback
    follows on lines of its own, as ever."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged, not what it was when the
    handler was made: a thread still at work (an alert being sent) after a command's stderr
    was closed and replaced wrote to the closed stream ("Logging error")."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Send ``ollama_meter`` logs to stderr at ``level``, as text or JSON lines."""
    handler = _Stderr()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logger = logging.getLogger("ollama_meter")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


FAILURE_INTERVAL = 10.0
"""Seconds between two log lines for one kind of recurring failure."""


class Throttled:
    """Log lines for a recurring event, at most one per kind every ``interval`` seconds.

    The first of a kind is logged at once; the ones after it within the interval are
    counted (and logged at DEBUG, traceback included), and the next line says how many
    there were. A database away for an hour is a line every 10 s per kind of failure,
    not a traceback per call, and no occurrence goes unsaid. ``counts``: every
    occurrence of each kind, logged or not.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.interval = FAILURE_INTERVAL if interval is None else interval
        self._clock = clock
        self._lock = ChildLock()
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def due(self, kind: str, count: int = 1) -> int | None:
        """Count ``count`` of ``kind`` (one event, or the spans of one batch): how many
        happened since its last line (these included) when a line is due now, else None."""
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + count
            unlogged = self._unlogged[kind] = self._unlogged.get(kind, 0) + count
            now, last = self._clock(), self._last.get(kind)
            if last is not None and now - last < self.interval:
                return None
            self._last[kind], self._unlogged[kind] = now, 0
            return unlogged

    def more(self, kind: str) -> str | None:
        """Count one ``kind``: None when its line is not due, else what the line adds: ""
        for the first, or how many more there were since the last line."""
        count = self.due(kind)
        if count is None or count == 1:
            return None if count is None else ""
        return f" (and {count - 1} more time(s) in the last {self.interval:.0f} s)"

    def failed(self, what: str, exc: BaseException, *args: object) -> None:
        """``what`` (a %-format of ``args``) failed with ``exc``: one ERROR line, throttled per
        ``what`` and kind of exception. An ometer error (the database is away) is its message;
        anything else, a bug, keeps its traceback."""
        more = self.more(f"{what}: {type(exc).__name__}")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if more is None:
            self.log.debug(f"{what} failed: %s", *args, reason, exc_info=exc)
            return
        self.log.error(
            f"{what} failed: %s{more}",
            *args,
            reason,
            exc_info=None if isinstance(exc, OmeterError) else exc,
        )
