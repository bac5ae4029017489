"""Group commit: many threads write spans, one transaction carries all that are waiting.

A caller's :meth:`write` returns only once its span is committed, so a call
that has answered is in the ledger even if the process is killed right after.
While one batch commits, newcomers gather in the next; when the commit ends, one
of them commits the whole gathered batch. At one caller this is one transaction
per span; under load the batch grows and the cost per span falls. Each batch has
its own condition, so a commit wakes only the threads it concerns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from ollama_meter._forks import renew_after_fork
from ollama_meter.records import SpanRecord, Stored


class SpanSink(Protocol):
    def record(self, spans: list[SpanRecord]) -> dict[str, Stored]: ...


class _Batch:
    """Spans that will share one transaction, and the waiters that learn its outcome."""

    __slots__ = ("done", "error", "spans", "stored", "turn")

    def __init__(self, lock: threading.Lock) -> None:
        self.spans: list[SpanRecord] = []
        self.stored: dict[str, Stored] = {}
        self.done = False
        self.error: BaseException | None = None
        self.turn = threading.Condition(lock)
        """Notified when this batch is committed, or when it may lead its own commit."""


class GroupCommitWriter:
    def __init__(self, sink: SpanSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._pending = _Batch(self._lock)
        self._committing = False
        renew_after_fork(self)

    def _after_fork(self) -> None:
        """A forked child's writer: no commit runs in it (the parent's thread that ran one is
        not there), and the spans waiting in the parent are the parent's to commit."""
        self._lock = threading.Lock()
        self._pending = _Batch(self._lock)
        self._committing = False

    def write(self, span: SpanRecord) -> Stored:
        """Commit ``span`` (with whatever else is waiting); says where it went, raises if nowhere."""
        return self.write_many([span])[span.id]

    def write_many(self, spans: list[SpanRecord]) -> dict[str, Stored]:
        """Commit ``spans`` (with whatever else is waiting); where each went, raises if nowhere.

        While a commit runs, newcomers gather in the pending batch. When it ends, its
        own waiters are told the outcome and one waiter of the pending batch is woken
        to commit that batch: no thread is woken for another batch's news. An interrupt
        is raised only in the thread it landed in; the others commit their spans again.
        """
        with self._lock:
            while True:
                batch = self._pending
                batch.spans.extend(spans)
                while self._committing and not batch.done:
                    batch.turn.wait()
                if not batch.done:
                    break
                if batch.error is None:
                    return {span.id: batch.stored[span.id] for span in spans}
                if isinstance(batch.error, Exception):
                    raise batch.error
                # Ctrl-C (or an exit) in the thread that led the commit: that thread's, not
                # this caller's, whose spans go in the next batch
            self._committing = True
            self._pending = _Batch(self._lock)
        error: BaseException | None = None
        stored: dict[str, Stored] = {}
        try:
            stored = self._sink.record(batch.spans)
        except BaseException as exc:  # every waiter must learn the outcome
            error = exc
        with self._lock:
            batch.error = error
            batch.stored = stored
            batch.done = True
            batch.turn.notify_all()
            self._committing = False
            self._pending.turn.notify()
        if error is not None:
            raise error
        return {span.id: stored[span.id] for span in spans}


def once_more(write: Callable[[], Stored]) -> tuple[Stored, BaseException | None]:
    """``write()``, done again if an interrupt (Ctrl-C, an exit) lands in it; the interrupt
    is handed back, to be raised once the span is written.

    The write is the one step of ending a call that waits (a commit, a sync to disk), so
    that is where a Ctrl-C lands: the call had been answered, and its span was rolled
    back with the commit. Writing a span again is a no-op by its id. A second interrupt
    (the caller insists) is raised as it comes.
    """
    try:
        return write(), None
    except (KeyboardInterrupt, SystemExit) as stop:
        return write(), stop
