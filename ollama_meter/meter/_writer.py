"""Group commit: many threads write spans, one transaction carries all that are waiting.

A caller's :meth:`write` returns only once its span is committed, so a call
that has answered is in the ledger even if the process is killed right after.
While one batch commits, newcomers queue; the next caller to take the commit
lock writes the whole queue. At one caller this is one transaction per span;
under load the batch grows and the cost per span falls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from ollama_meter.meter.span import SpanRecord


class SpanSink(Protocol):
    def record(self, spans: list[SpanRecord]) -> None: ...


@dataclass(slots=True)
class _Ticket:
    span: SpanRecord
    done: bool = False
    error: BaseException | None = None


class GroupCommitWriter:
    def __init__(self, sink: SpanSink, *, max_batch: int = 5000) -> None:
        self._sink = sink
        self._max_batch = max_batch
        self._queue: list[_Ticket] = []
        self._cond = threading.Condition()
        self._committing = False

    def write(self, span: SpanRecord) -> None:
        """Commit ``span`` (with whatever else is waiting); raises if the commit failed."""
        ticket = _Ticket(span)
        with self._cond:
            self._queue.append(ticket)
            # Wait while another thread commits; it may well take our span along.
            while self._committing and not ticket.done:
                self._cond.wait()
            if ticket.done:
                leader = False
            else:
                leader = self._committing = True
        if not leader:
            if ticket.error is not None:
                raise ticket.error
            return
        try:
            while not ticket.done:
                with self._cond:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                error: BaseException | None = None
                try:
                    self._sink.record([t.span for t in batch])
                except BaseException as exc:  # every waiter must learn the outcome
                    error = exc
                with self._cond:
                    for waiting in batch:
                        waiting.error = error
                        waiting.done = True
        finally:
            with self._cond:
                self._committing = False
                self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
