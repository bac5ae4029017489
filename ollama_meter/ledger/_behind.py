"""An import's batches written behind its reading: one batch in a thread of its own while the
next batch's lines are read, checked and made into rows.

SQLite's and PostgreSQL's drivers let go of the interpreter while the database works (a
third of an import's time), so the reading thread runs meanwhile. What the database does not
decide is made before a batch's transaction, in the reading thread: its spans in id order,
their rows' parameters, the rollups they add (:class:`Ready`). The transaction still holds a
batch's spans and rollups together, and makes the rollups again from the spans it really
added when the ledger had some of them already.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._meta import ledger_zone
from ollama_meter.ledger._rollup import DeltaRows, RollupDelta
from ollama_meter.ledger._spans import Inserted, insert_spans, span_insert, unique_spans
from ollama_meter.records import SpanRecord

if TYPE_CHECKING:
    from sqlalchemy import Dialect

    from ollama_meter.ledger._jsonl import ImportSummary
    from ollama_meter.ledger._ledger import Ledger


@dataclass(slots=True)
class Ready:
    """A batch made ready to write before its transaction: its spans by id, their rows'
    parameters, and the rollups they add if the ledger adds every one."""

    unique: list[SpanRecord]
    chunks: list[list[Any]]
    delta: RollupDelta
    rows: DeltaRows | None = None
    """The delta's rows, once the ledger's zone is known (:meth:`RollupDelta.rows`)."""


def ready_spans(dialect: Dialect, spans: Sequence[SpanRecord]) -> Ready:
    """``spans`` made ready for :func:`~ollama_meter.ledger._spans.insert_spans` on ``dialect``."""
    unique = unique_spans(spans)
    delta = RollupDelta()
    for span in unique:
        delta.add(span)
    return Ready(unique, span_insert(dialect).chunks(unique), delta)


class WriteBehind:
    """An import's batches written in a thread of their own, one at a time, while the next
    is read. What a batch did is counted in ``summary`` (and ``progress`` told) in order,
    once it is written and before the next is sent or the import ends, so a failure, a bad
    line or Ctrl-C says how many spans are recorded as before. A SQLite ledger in memory is
    written in the reading thread (each thread has a database of its own there)."""

    def __init__(
        self,
        summary: ImportSummary,
        progress: Callable[[int], None] | None,
        pruned_too: bool,
    ) -> None:
        self.summary = summary
        self.progress = progress
        self.pruned_too = pruned_too
        self.pool: ThreadPoolExecutor | None = None
        self.running: tuple[Future[Inserted], int] | None = None
        self.zone: list[tzinfo | None] = []
        """The ledger's zone, once a batch has read it: the next batch's rows are made in it."""

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is not None:  # stopped meanwhile (Ctrl-C, a bad line): the batch in
                with contextlib.suppress(Exception):  # flight ends whole, and is counted
                    self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()

    def write(self, ledger: Ledger, spans: list[SpanRecord]) -> None:
        """Send ``spans`` to be written, once the batch before them is."""
        ready = ready_spans(ledger.engine.dialect, spans)
        if self.zone:  # (made again in the transaction if the zone changed meanwhile)
            ready.rows = ready.delta.rows(self.zone[-1])
        self.wait()
        if ledger.engine.dialect.name == "sqlite" and ledger.path is None:
            done: Future[Inserted] = Future()
            try:
                done.set_result(_insert(ledger, ready, self.pruned_too, self.zone))
            except Exception as exc:
                done.set_exception(exc)
        else:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(1, thread_name_prefix="ometer-import")
            # in this thread's context: bulk work's deadlines and messages hold there too
            run = contextvars.copy_context().run
            done = self.pool.submit(run, _insert, ledger, ready, self.pruned_too, self.zone)
        self.running = done, len(spans)

    def wait(self) -> None:
        """Count the batch in flight once it is written; raise its failure."""
        if self.running is None:
            return
        done, size = self.running
        summary = self.summary
        try:
            inserted = done.result()
        except LedgerError as exc:  # the batch is rolled back whole: running again is safe
            raise LedgerError(
                f"{exc}; the {summary.read:,} span(s) before this batch are recorded: run "
                "the same import again once it answers (spans already there are skipped)"
            ) from exc
        finally:
            if done.done():  # (Ctrl-C while it is written: the batch is waited for again)
                self.running = None
        summary.added += len(inserted.added)
        summary.pruned += len(inserted.early)
        summary.horizon = inserted.horizon or summary.horizon
        summary.read += size
        if self.progress is not None:
            self.progress(size)


def _insert(ledger: Ledger, ready: Ready, pruned_too: bool, zone: list[tzinfo | None]) -> Inserted:
    with ledger.write() as conn:
        zone[:] = [ledger_zone(conn)]
        # Spans before the prune horizon the ledger does not hold are left out, as every
        # write leaves them (insert_spans): counted, not kept.
        return insert_spans(conn, ready.unique, pruned_too=pruned_too, ready=ready)
