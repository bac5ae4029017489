"""Writing spans so that no completed call is lost, whatever goes wrong with the write.

- the database is busy, away or full: the spans go to the spool, and are recorded by the
  next write that succeeds (or the next process that opens);
- the spool cannot be written either (the disk is full): the spans are held in memory
  (bounded) and :meth:`check_writable` refuses new calls until they are written somewhere;
- one span in a batch is refused for its content: the others are recorded, and that one
  goes to the quarantine with a log line saying why and where.

The journal notes each span once it is durable, so a crash leaves a trace only of the
calls that really were in flight.
"""

from __future__ import annotations

import atexit
import logging
import shlex
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from ollama_meter._logging import Throttled
from ollama_meter.errors import LedgerError
from ollama_meter.ledger import _spans
from ollama_meter.ledger._budgets import drop_reservations
from ollama_meter.ledger._database import Database, is_content_error
from ollama_meter.ledger._engine import DEFAULT_WAIT
from ollama_meter.ledger._failing import Failing, passing, spooled_level
from ollama_meter.ledger._glance import OPENING, Spell, glancing
from ollama_meter.ledger._journal import Journal, Orphan
from ollama_meter.ledger._migrate import HEAD_REVISION, current_revision
from ollama_meter.ledger._spool import BEFORE_HORIZON, Rejected, Spool
from ollama_meter.ledger._spool_dir import default_spool_dir
from ollama_meter.records import DURABLE, SpanRecord, Stored

log = logging.getLogger("ollama_meter.ledger")

MAX_HELD = 10_000
"""Spans kept in memory while neither the database nor the spool can take them."""
_HELD_RETRY_SECONDS = 1.0
DRAIN_SLICE = 0.2
"""Seconds a write spends recording the spool once the database answers again. The write
is every waiting call's (group commit): a long outage spools thousands of files, and
recording them all in the first write after it held every call for a minute and more."""


class DurableLedger(Database):
    """A database that spans are recorded into durably: spool, quarantine, memory as fallbacks."""

    def __init__(
        self,
        url: str,
        *,
        spool_dir: Path | None = None,
        wait: float = DEFAULT_WAIT,
        retry_delay: float = 0.05,
    ) -> None:
        super().__init__(url, wait=wait, retry_delay=retry_delay)
        self.spool = Spool(spool_dir or default_spool_dir(url))
        self.journal = Journal(self.spool.directory / "journal")
        self._spooled = False
        self.drain_slice = DRAIN_SLICE
        """Seconds a write spends recording the spool (:data:`DRAIN_SLICE`); 0: one file."""
        self._spooling = Throttled(log)
        self._early = Throttled(log)
        """Says spans set aside for starting before the prune horizon (:meth:`_keep_early`)."""
        self._held: list[SpanRecord] = []
        self._last_try_at_exit = False  # give_up_held is registered with atexit
        self._held_lock, self._held_tried = threading.Lock(), 0.0
        self.writes, self.spell = Failing(), Spell(wait)  # spell: a wait ran out just now
        self.looks_at_budgets = False  # a server's: each span write reads budgets_version
        self.budgets_seen: str | None = None  # as the last span write read it
        self.price: _spans.Pricer | None = None  # a meter's: spans priced as they commit

    def _after_fork(self) -> None:
        """The child writes what the parent held in memory too (recording is idempotent:
        whichever process gets there first records it once)."""
        super()._after_fork()
        self._held_lock = threading.Lock()

    def recover(self) -> int:
        """Record spans a refused write left in the spool, and those a dead gateway answered
        before their commit (whole in its journal), glancing at locks (``_glance``); how many."""
        with glancing(OPENING):
            with self.journal.orphans(finals_only=True) as answered:
                if answered:
                    self.free_leases(answered, self.record([orphan.span for orphan in answered]))
            return (self._drain() or 0) + len(answered)

    def free_leases(self, orphans: Sequence[Orphan], stored: dict[str, Stored]) -> None:
        """Remove the budget lease rows the dead processes of ``orphans`` held for them, once
        their spans are committed (``stored``: what :meth:`record` said): left, each held its
        call's bound, counted besides its cost in the spend, until it expired (15 minutes).
        A span still in the spool keeps its hold. Best effort: a row not removed expires."""
        done = [o for o in orphans if stored.get(o.span.id) == Stored.COMMITTED]
        if ids := sorted({lease for orphan in done for lease in orphan.leases}):
            try:
                with self.write() as conn:
                    drop_reservations(conn, ids)
            except LedgerError as exc:
                log.warning(
                    "could not free %d budget lease(s) of dead processes: %s", len(ids), exc
                )

    @property
    def failing(self) -> str | None:
        """Why this process's writes fail, since when, and where their spans wait; None
        while they succeed (:class:`~ollama_meter.ledger._failing.Failing`)."""
        return self.writes.said(self.spool.directory)

    @property
    def kept_aside(self) -> bool:
        """Whether this process has spans no write brought in since: spooled, or held in memory."""
        return self._spooled or bool(self._held)

    def bring_in(self) -> int | None:
        """Write what this process holds in memory, and a slice of what it spooled, with no
        span of its own to write; how many spooled spans that was, None while it fails.

        Only a write that succeeded did it: a gateway left idle after an outage kept the
        outage's calls out of the ledger (out of reports on every other host, and their cost
        held in its budget lease) until its next call, which could be hours or a month end
        later. Its idle commit thread calls this instead. A failure is said at DEBUG: each
        call's spooling said it already.
        """
        if self._held and not self._write_held():
            return None
        if not self._spooled:
            return 0
        self._spooled = False
        count = self._drain(self.drain_slice, failed_at=logging.DEBUG)
        if count is None or self.spool.pending():
            self._spooled = True
        return count

    def _drain(self, within: float | None = None, failed_at: int = logging.WARNING) -> int | None:
        """Record the spool (for about ``within`` seconds, at least one file); how many
        spans that was, None when the database failed and the rest stays spooled, for the
        next write that succeeds (not marked so, the spool a process could not record as
        it opened stayed out of the ledger until the next process opened it)."""
        if not self.spool.pending():
            return 0
        until = None if within is None else time.monotonic() + within
        try:
            count = self.spool.drain(self._record_now, self._isolate, until=until)
        except LedgerError as exc:
            log.log(failed_at, "spooled spans stay spooled for now: %s", exc)
            self._spooled = True
            return None
        log.info("recorded %d spooled span(s) into %s", count, self.display_url)
        return count

    def record(self, spans: Sequence[SpanRecord]) -> dict[str, Stored]:
        """Make ``spans`` durable; says where each one went.

        Committed in one transaction when the database takes them. Re-recording a span
        id is a no-op. A busy database gets ``wait`` seconds; then the spans go to the
        spool (and a warning to the log). A span refused for its content is isolated
        from the others and quarantined. Raises :class:`LedgerError` only when nothing,
        not even memory, can keep them.
        """
        if self._held:
            self._write_held()
        try:
            stored = self._record_now(spans)
        except Rejected:
            stored = self._isolate(spans)
        except LedgerError as exc:
            return self.keep(spans, exc)
        if self._spooled:  # the database answers again: bring in what waited, a slice a write
            self._spooled = False
            if self._drain(self.drain_slice) is not None and self.spool.pending():
                self._spooled = True  # the slice ran out: the next write records more
        self.journal.closed([i for i, where in stored.items() if where in DURABLE])
        return stored

    def _record_now(
        self, spans: Sequence[SpanRecord], spool_file: Path | None = None
    ) -> dict[str, Stored]:
        """Commit ``spans`` in one transaction; where each went: committed, or kept aside
        when it started before the prune horizon (see :meth:`_keep_early`)."""
        done: list[_spans.Inserted] = []

        def insert() -> None:
            budgets, price = self.looks_at_budgets, self.price
            with self.write() as conn:
                done[:] = [_spans.insert_spans(conn, spans, budgets=budgets, price=price)]

        failure = f"could not write {len(spans)} span(s) to the ledger at {self.display_url}"
        try:
            with self.spell.cast():  # a wait for a lock ran out just now: a glance
                self._retry_locked(insert, failure)
        except LedgerError as exc:
            self.spell.failed(passing(exc))
            self.writes.failed(exc)
            raise
        except Exception as exc:
            if is_content_error(exc):
                self._check_schema_kept(exc)
                raise Rejected(str(exc)) from exc
            raise
        self.writes.passed()
        self.budgets_seen = done[0].budgets
        stored = dict.fromkeys((s.id for s in spans), Stored.COMMITTED)
        if early := done[0].early:
            stored.update(self._keep_early(early, done[0].horizon, spool_file))
        return stored

    def _keep_early(
        self, spans: list[SpanRecord], horizon: datetime | None, spool_file: Path | None
    ) -> dict[str, Stored]:
        """Keep spans no write records, for starting before the prune horizon, for a human:
        the ledger cannot tell whether its rollups count them already (recorded, pruned, then
        replayed from a spool file or journal) or not (spooled across the prune, a clock days
        behind). ``spool_file``: they are in it already (a drain); kept nowhere else, they
        stay there. Else, when they cannot be kept, they are spooled (or held), as spans
        the database cannot take are.

        Each write's spans go to a file of their own (the same spans set aside again go to
        the same file, so a repeated drain adds no line); the ERROR saying so is one every
        10 s at most, with how many spans were set aside since: a gateway whose clock is days
        behind set aside every call, and a late drain every file, each with its own line."""
        ids = [span.id for span in spans]
        when = f"{horizon:%Y-%m-%d %H:%M} UTC" if horizon else "the prune horizon"
        try:
            where = self.spool.set_aside_early(spans)
        except OSError as exc:
            why = (
                f"{len(spans)} span(s) started before {when}, and cannot be kept in "
                f"{self.spool.quarantine_dir} ({exc})"
            )
            if spool_file is not None:
                said = self._early.due("unkept", len(spans))
                log.log(
                    logging.DEBUG if said is None else logging.ERROR,
                    "%s: they stay in the spool file %s%s",
                    why,
                    spool_file,
                    _since(said, len(spans), "left in their spool files alike"),
                )
                return dict.fromkeys(ids, Stored.SPOOLED)
            return self.keep(spans, LedgerError(why))
        said = self._early.due("kept", len(spans))
        log.log(
            logging.DEBUG if said is None else logging.ERROR,
            "%d span(s) (the first %s, %s/%s) started before %s, where the raw spans of the "
            "ledger at %s were pruned: not recorded, since its rollups of those days may count "
            "them already (spans recorded, pruned, then replayed from a spool file or a journal "
            "would count twice). Kept them in %s%s: if their days' report lacks them (spooled "
            "across the prune, or a clock days behind), add them with: "
            "ometer db import --pruned-too %s (each file *%s in %s alike)",
            len(spans),
            spans[0].id,
            spans[0].tenant,
            spans[0].department,
            when,
            self.display_url,
            where,
            _since(said, len(spans), "set aside in files of their own there"),
            shlex.quote(str(where)),
            BEFORE_HORIZON,
            self.spool.quarantine_dir,
        )
        return dict.fromkeys(ids, Stored.QUARANTINED)

    def _check_schema_kept(self, exc: Exception) -> None:
        """A refused write on a ledger a newer ometer migrated meanwhile (``ometer db
        upgrade`` beside this running gateway) is the new schema refusing this version's
        insert, not the span: a LedgerError, so the spans wait in the spool for the newer
        ometer instead of going to the quarantine, out of every drain."""
        try:
            found = current_revision(self.engine)
        except DBAPIError:
            return
        if found is not None and found != HEAD_REVISION:
            newer = LedgerError(
                f"the ledger at {self.display_url} is now at schema revision {found}: a newer "
                f"ometer upgraded it while this one ({HEAD_REVISION}) ran, and it refuses this "
                "version's writes. Restart this process with the newer ometer (pip install -U "
                "ollama-meter); it records the spooled spans"
            )
            self.writes.failed(newer)
            raise newer from exc

    def _isolate(
        self, spans: Sequence[SpanRecord], spool_file: Path | None = None
    ) -> dict[str, Stored]:
        """Record spans one by one: a span the database refuses cannot take the others with it.

        ``spool_file``: the spans are in that spool file already (a drain); one that can be
        neither recorded nor quarantined stays there (SPOOLED), never moved to memory, which
        the process would take with it when it ends.
        """
        stored: dict[str, Stored] = {}
        for span in spans:
            try:
                stored.update(self._record_now([span], spool_file))
            except Rejected as refused:
                reason = str(refused.__cause__ or refused)
                stored[span.id] = self._quarantine(span, reason, spool_file)
            except LedgerError as exc:
                if spool_file is not None:
                    stored[span.id] = Stored.SPOOLED
                else:
                    stored.update(self.keep([span], exc))
        return stored

    def _quarantine(self, span: SpanRecord, reason: str, spool_file: Path | None = None) -> Stored:
        reason = reason.strip().splitlines()[0][:500] if reason.strip() else "refused"
        try:
            where = self.spool.quarantine(span, reason)
        except OSError as exc:
            if spool_file is None:
                return self._hold([span], f"{reason}; and the quarantine failed: {exc}")
            log.error(
                "span %s cannot be stored in the ledger at %s: %s; and cannot be kept in %s "
                "(%s): it stays in the spool file %s",
                span.id,
                self.display_url,
                reason,
                self.spool.quarantine_dir,
                exc,
                spool_file,
            )
            return Stored.SPOOLED
        log.error(
            "span %s (%s/%s, model %.80r) cannot be stored in the ledger at %s: %s; "
            "kept in %s for a human to look at",
            span.id,
            span.tenant,
            span.department,
            span.request_model,
            self.display_url,
            reason,
            where,
        )
        return Stored.QUARANTINED

    def keep(self, spans: Sequence[SpanRecord], exc: LedgerError) -> dict[str, Stored]:
        """The database cannot take ``spans`` now (``exc`` says why): spool them, else hold
        them in memory. A caller that has just waited for the database calls it directly."""
        try:
            where = self.spool.put(spans)
        except OSError as spool_exc:
            stored = self._hold(
                spans, f"{exc}; the spool at {self.spool.directory} failed too: {spool_exc}"
            )
            return dict.fromkeys((s.id for s in spans), stored)
        self._spooled = True
        said = "%s; kept them in %s to be recorded once the database answers%s"
        # A line per kind of failure every 10 s, not a line a call for the whole outage.
        more = self._spooling.more(type(exc.__cause__ or exc).__name__)
        if more is None:
            log.debug(said, exc, where, "")
        else:
            log.log(spooled_level(exc), said, exc, where, more)
        self.journal.closed([s.id for s in spans])
        return dict.fromkeys((s.id for s in spans), Stored.SPOOLED)

    def _hold(self, spans: Sequence[SpanRecord], why: str) -> Stored:
        with self._held_lock:
            if len(self._held) + len(spans) > MAX_HELD:
                raise LedgerError(
                    f"cannot record {len(spans)} span(s): {why}; {len(self._held)} more wait "
                    "in memory already"
                )
            self._held.extend(spans)
            held = len(self._held)
            if not self._last_try_at_exit:
                self._last_try_at_exit = True
                atexit.register(self.give_up_held)
        log.error(
            "%s; holding %d span(s) in memory and refusing new calls until they are written",
            why,
            held,
        )
        return Stored.HELD

    def _write_held(self) -> bool:
        """Try to put the spans held in memory somewhere durable; True when none is left."""
        with self._held_lock:
            spans, self._held = self._held, []
            self._held_tried = time.monotonic()
        if not spans:
            return True
        try:
            stored = self._record_now(spans)
            durable = [i for i, where in stored.items() if where in DURABLE]
        except (Rejected, LedgerError):
            try:
                self.spool.put(spans)
                durable = [s.id for s in spans]
                self._spooled = True  # brought in by a later write, or an idle gateway
            except OSError:
                with self._held_lock:
                    self._held[:0] = spans
                return False
        log.warning("wrote the %d span(s) that were held in memory", len(spans))
        self.journal.closed(durable)
        return not self._held

    def check_writable(self) -> None:
        """Raise :class:`LedgerError` while spans are held in memory: no new call is taken
        on that can't be recorded. Costs nothing when all is well."""
        if not self._held:
            return
        if time.monotonic() - self._held_tried >= _HELD_RETRY_SECONDS and self._write_held():
            return
        raise LedgerError(
            f"nothing can be recorded right now: the ledger at {self.display_url} and its spool "
            f"at {self.spool.directory} both fail to write (is the disk full?); "
            f"{len(self._held)} span(s) wait in memory. Calls are refused until they are written"
        )

    @property
    def held(self) -> int:
        return len(self._held)

    def give_up_held(self) -> int:
        """The process ends (or the ledger is closed) with spans held in memory: the ledger
        and the spool get one more try; what neither takes goes to a file in the temporary
        folder, named with its ``ometer db import`` in an ERROR line, else to the log. Returns
        how many spans went there, unrecorded."""
        if not self._held or self._write_held():
            return 0
        with self._held_lock:
            spans, self._held = self._held, []
        from ollama_meter.ledger._jsonl import save_unrecorded  # msgspec: loaded if needed

        where = f"the ledger at {self.display_url} and its spool at {self.spool.directory}"
        save_unrecorded(spans, where)
        return len(spans)

    def dispose(self) -> None:
        self.give_up_held()
        self.journal.close()
        super().dispose()


def _since(said: int | None, these: int, how: str) -> str:
    """What a throttled line adds: how many more spans were ``how`` since the last such line,
    when there were more than ``these``, this write's."""
    if said is None or said <= these:
        return ""
    return f" (and {said - these} more span(s) {how} since the last such line)"
