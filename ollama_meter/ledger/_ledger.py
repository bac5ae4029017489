"""The ledger: one object per database, shared by every entry point of a process.

Owns the engine, first-use migration and transactions. Writes go through
:meth:`Ledger.record`, one transaction per batch; the meter's
:class:`GroupCommitWriter` batches concurrent callers into it.

No completed call is lost, whatever goes wrong with the write:

- the database is busy, away or full: the spans go to the spool, and are
  recorded by the next write that succeeds (or the next process that opens);
- the spool cannot be written either (the disk is full): the spans are held in
  memory (bounded) and :meth:`check_writable` refuses new calls until they are
  written somewhere;
- one span in a batch is refused for its content: the others are recorded, and
  that one goes to the quarantine with a log line saying why and where.

Each write waits at most ``wait`` seconds for a busy database.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, StatementError

from ollama_meter._paths import default_data_dir
from ollama_meter.errors import BudgetError, LedgerError, PricingError
from ollama_meter.ledger import _aggregate, _budgets, _currencies, _keys, _prices, _rollup, _spans
from ollama_meter.ledger._engine import DEFAULT_WAIT, create_ledger_engine, sqlite_path
from ollama_meter.ledger._journal import Journal
from ollama_meter.ledger._keys import ApiKey
from ollama_meter.ledger._migrate import ensure_current
from ollama_meter.ledger._spool import Rejected, Spool
from ollama_meter.ledger.models import SpanRow
from ollama_meter.records import DURABLE, Alert, Budget, PastCall, PriceRule, SpanRecord, Stored

log = logging.getLogger("ollama_meter.ledger")

MAX_HELD = 10_000
"""Spans kept in memory while neither the database nor the spool can take them."""
_HELD_RETRY_SECONDS = 1.0


def default_spool_dir(url: str) -> Path:
    """Beside a SQLite file; in the user data dir, per database, for servers."""
    path = sqlite_path(make_url(url))
    if path is not None:
        return path.with_name(f"{path.name}.spool")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return default_data_dir() / "spool" / digest


def _is_content_error(exc: BaseException) -> bool:
    """A failure caused by what a span holds, not by the database being unavailable."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    # Raised while binding parameters: text that cannot be encoded, a value out of range.
    return isinstance(exc, StatementError | ValueError | TypeError | OverflowError)


class Ledger:
    """A ledger database at ``url`` (any SQLAlchemy URL), migrated to the current schema."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        spool_dir: Path | None = None,
        wait: float = DEFAULT_WAIT,
        retry_delay: float = 0.05,
    ) -> None:
        self.url = url
        self.engine = create_ledger_engine(url, wait=wait)
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._wait = wait
        self._retry_delay = retry_delay
        self.spool = Spool(spool_dir or default_spool_dir(url))
        self.journal = Journal(self.spool.directory / "journal")
        self._spooled = False
        self._held: list[SpanRecord] = []
        self._held_lock = threading.Lock()
        self._held_tried = 0.0
        if migrate:
            self._retry_locked(
                lambda: ensure_current(self.engine), f"cannot open the ledger at {self.display_url}"
            )
            _rollup.build_if_stale(self)
            self.recover()

    def recover(self) -> int:
        """Record spans a refused write left in the spool; how many there were."""
        if not self.spool.pending():
            return 0
        try:
            count = self.spool.drain(self._record_now, self._isolate)
        except LedgerError as exc:
            log.warning("spooled spans stay spooled for now: %s", exc)
            return 0
        log.info("recorded %d spooled span(s) into %s", count, self.display_url)
        return count

    @functools.cached_property
    def display_url(self) -> str:
        """The URL with any password hidden, or the file path for SQLite."""
        path = self.path
        return str(path) if path is not None else make_url(self.url).render_as_string()

    @property
    def path(self) -> Path | None:
        return sqlite_path(make_url(self.url))

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.failures_named(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.failures_named(), self.engine.connect() as conn:
            if self._sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def failures_named(self) -> Iterator[None]:
        """A database failure (server down, disk full, locked) leaves as one LedgerError."""
        try:
            yield
        except DBAPIError as exc:
            if _is_content_error(exc):
                raise
            raise LedgerError(
                f"the ledger at {self.display_url} failed: {self.explain(exc)}"
            ) from exc

    def explain(self, exc: DBAPIError) -> str:
        """The driver's message, and what to do when the cause is one a user can fix."""
        text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        lowered = text.lower()
        if "malformed" in lowered or "not a database" in lowered:
            return (
                f"{text}: the file is damaged or is not an ometer ledger. Restore it from a "
                "backup (`ometer db backup FILE` makes one), or move it aside to start a new "
                "ledger; spans spooled since stay in the spool"
            )
        if "disk is full" in lowered or "no space" in lowered:
            return f"{text}: free some disk space; spans wait in the spool meanwhile"
        return text

    # -- writing spans -------------------------------------------------------------------

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
            self._record_now(spans)
            stored = dict.fromkeys((s.id for s in spans), Stored.COMMITTED)
        except Rejected:
            stored = self._isolate(spans)
        except LedgerError as exc:
            return self._keep(spans, exc)
        if self._spooled:  # the database answers again: bring in what waited
            self._spooled = False
            self.recover()
        self.journal.closed([i for i, where in stored.items() if where in DURABLE])
        return stored

    def _record_now(self, spans: Sequence[SpanRecord]) -> None:
        def insert() -> None:
            with self.write() as conn:
                _spans.insert_spans(conn, spans)

        try:
            self._retry_locked(
                insert, f"could not write {len(spans)} span(s) to the ledger at {self.display_url}"
            )
        except LedgerError:
            raise
        except Exception as exc:
            if _is_content_error(exc):
                raise Rejected(str(exc)) from exc
            raise

    def _isolate(self, spans: Sequence[SpanRecord]) -> dict[str, Stored]:
        """Record spans one by one: a span the database refuses cannot take the others with it."""
        stored: dict[str, Stored] = {}
        for span in spans:
            try:
                self._record_now([span])
                stored[span.id] = Stored.COMMITTED
            except Rejected as refused:
                stored[span.id] = self._quarantine(span, str(refused.__cause__ or refused))
            except LedgerError as exc:
                stored.update(self._keep([span], exc))
        return stored

    def _quarantine(self, span: SpanRecord, reason: str) -> Stored:
        reason = reason.strip().splitlines()[0][:500] if reason.strip() else "refused"
        try:
            where = self.spool.quarantine(span, reason)
        except OSError as exc:
            return self._hold([span], f"{reason}; and the quarantine failed: {exc}")
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

    def _keep(self, spans: Sequence[SpanRecord], exc: LedgerError) -> dict[str, Stored]:
        """The database cannot take ``spans`` now: spool them, else hold them in memory."""
        try:
            where = self.spool.put(spans)
        except OSError as spool_exc:
            stored = self._hold(
                spans, f"{exc}; the spool at {self.spool.directory} failed too: {spool_exc}"
            )
            return dict.fromkeys((s.id for s in spans), stored)
        self._spooled = True
        log.warning("%s; kept them in %s to be recorded once the database answers", exc, where)
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
            self._record_now(spans)
            durable = [s.id for s in spans]
        except (Rejected, LedgerError):
            try:
                self.spool.put(spans)
                durable = [s.id for s in spans]
            except OSError:
                with self._held_lock:
                    self._held[:0] = spans
                return False
        log.warning("wrote the %d span(s) that were held in memory", len(spans))
        self.journal.closed(durable)
        return True

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

    def _retry_locked(self, action: Callable[[], object], failure: str) -> None:
        """Run ``action``, again with backoff while the database reports a lock.

        The busy timeout covers ordinary waits; SQLite still answers "locked" at once
        in a few races (a fresh file switching to WAL, a snapshot gone stale), and those
        pass on a second try. Retries stop once ``wait`` seconds have passed. Anything
        else, or the last try, is one LedgerError starting with ``failure``.
        """
        deadline = time.monotonic() + self._wait
        attempt = 0
        while True:
            attempt += 1
            try:
                action()
                return
            except (OperationalError, LedgerError) as exc:
                cause = exc if isinstance(exc, OperationalError) else exc.__cause__
                locked = isinstance(cause, DBAPIError) and _is_lock_error(cause)
                delay = self._retry_delay * 2 ** min(attempt, 6)
                if not locked or time.monotonic() + delay > deadline:
                    if isinstance(cause, DBAPIError):
                        raise LedgerError(f"{failure}: {self.explain(cause)}") from cause
                    raise
                log.debug("%s: database locked, try %d", failure, attempt)
                time.sleep(delay)
            except DBAPIError as exc:
                if _is_content_error(exc):
                    raise
                raise LedgerError(f"{failure}: {self.explain(exc)}") from exc

    def latest(self, where: _spans.SpanFilter, limit: int = 20) -> list[SpanRecord]:
        with self.read() as conn:
            return _spans.latest_spans(conn, where, limit)

    def count(self, where: _spans.SpanFilter | None = None) -> int:
        clauses = where.clauses() if where else []
        with self.read() as conn:
            return int(
                conn.execute(select(func.count()).select_from(SpanRow).where(*clauses)).scalar_one()
            )

    def page_after(self, where: _spans.SpanFilter, after: str, limit: int) -> list[SpanRecord]:
        """The next ``limit`` matching spans with ids above ``after`` (keyset paging)."""
        with self.read() as conn:
            return _spans.page_after(conn, where, after, limit)

    def update_costs(self, spans: Sequence[SpanRecord]) -> None:
        """Write the cost columns of recorded spans back, rollups with them, in one transaction."""
        with self.write() as conn:
            _spans.update_costs(conn, spans)

    # -- aggregates: what reports, budgets and the dashboard read -----------------------

    def spend(
        self,
        where: _spans.SpanFilter,
        by: Sequence[str] = (),
        bucket_starts: Sequence[datetime] = (),
    ) -> list[_aggregate.SpendRow]:
        """Sums per (``by`` groups, time bucket, currency) over ``where``'s window."""
        with self.read() as conn:
            return _aggregate.aggregate_spend(conn, where, by, bucket_starts)

    def timings(
        self,
        where: _spans.SpanFilter,
        by: Sequence[str] = (),
        bucket_starts: Sequence[datetime] = (),
    ) -> tuple[list[_aggregate.SpendRow], _aggregate.HistogramResult]:
        """Sums and latency/TTFT/queue/speed histograms per group, read as one snapshot."""
        with self.read() as conn:
            sums = _aggregate.aggregate_spend(conn, where, by, bucket_starts)
            return sums, _aggregate.aggregate_histograms(conn, where, by, bucket_starts)

    def failures(self, where: _spans.SpanFilter) -> list[_aggregate.FailureCount]:
        """Calls that did not end ``ok``, counted per (status, error type)."""
        with self.read() as conn:
            return _aggregate.aggregate_failures(conn, where)

    def busy(self, since: datetime, until: datetime) -> tuple[int, int]:
        """(busy ns summed over upstream hosts, number of hosts) in [since, until)."""
        with self.read() as conn:
            return _aggregate.busy_union(conn, since, until)

    # -- price rules -----------------------------------------------------------------

    def price_rules(self) -> list[PriceRule]:
        with self.read() as conn:
            return _prices.list_rules(conn)

    def add_price_rule(self, rule: PriceRule) -> PriceRule:
        """Add ``rule``, or return the identical rule already there (the same rule is the same rule)."""
        return self.add_price_rules([rule])[0][0]

    def add_price_rules(self, rules: Sequence[PriceRule]) -> list[tuple[PriceRule, bool]]:
        """Add every rule not already present, in one transaction; (rule, whether it is new) each.

        Refused as a whole if a rule would leave a budget unable to count its calls.
        """
        with self.write() as conn:
            existing = _prices.list_rules(conn)
            result: list[tuple[PriceRule, bool]] = []
            for rule in rules:
                same = next((r for r in existing if r.same_as(rule)), None)
                if same is None:
                    same = _prices.add_rules(conn, [rule])[0]
                    existing.append(same)
                    result.append((same, True))
                else:
                    result.append((same, False))
            _currencies.check_rules(conn, [r for r, new in result if new])
            return result

    def remove_price_rule(self, rule_id: int) -> None:
        with self.write() as conn:
            if not _prices.remove_rule(conn, rule_id):
                raise PricingError(f"no price rule with id {rule_id}; see `ometer pricing list`")

    def sync_price_rules(self, source: str, rules: Sequence[PriceRule], content: bytes) -> bool:
        """Make the rules from ``source`` (a pricing file) match its content; True if they changed."""
        digest = hashlib.sha256(content).hexdigest()
        with self.write() as conn:
            if _prices.file_digest(conn, source) == digest:
                return False
            _prices.replace_source(conn, source, rules, digest)
            _currencies.check_rules(conn, rules)
            return True

    def recent_usage(self, model: str, limit: int = 20) -> list[PastCall]:
        """Usage of the latest successful calls to ``model``: what budgets estimate from."""
        with self.read() as conn:
            return _spans.recent_usage(conn, model, limit)

    # -- budgets and alerts --------------------------------------------------------------

    def budgets(self) -> list[Budget]:
        with self.read() as conn:
            return _budgets.list_budgets(conn)

    def save_budget(self, budget: Budget) -> Budget:
        """Insert or replace a budget; refused if it could not count calls (currency)."""
        with self.write() as conn:
            _currencies.check_budgets(conn, [budget])
            return _budgets.save_budget(conn, budget)

    def remove_budget(self, budget_id: int) -> None:
        with self.write() as conn:
            if not _budgets.remove_budget(conn, budget_id):
                raise BudgetError(f"no budget with id {budget_id}; see `ometer budget list`")

    def sync_budgets(self, source: str, budgets: Sequence[Budget]) -> bool:
        with self.write() as conn:
            changed = _budgets.sync_source(conn, source, budgets)
            if changed:
                _currencies.check_budgets(conn, budgets)
            return changed

    @contextlib.contextmanager
    def budget_transaction(self) -> Iterator[_budgets.BudgetTables]:
        """The budget tables in one write transaction (locks, leases, alerts)."""
        with self.write() as conn:
            yield _budgets.BudgetTables(conn)

    @contextlib.contextmanager
    def budget_snapshot(self) -> Iterator[_budgets.BudgetTables]:
        """The budget tables as one consistent read (use only its read methods)."""
        with self.read() as conn:
            yield _budgets.BudgetTables(conn)

    def alerts(
        self, *, undelivered_only: bool = False, max_attempts: int | None = None
    ) -> list[Alert]:
        with self.read() as conn:
            return _budgets.alerts(
                conn, undelivered_only=undelivered_only, max_attempts=max_attempts
            )

    def record_alert_attempt(self, alert_id: int) -> None:
        with self.write() as conn:
            _budgets.record_attempt(conn, alert_id)

    def record_alert_delivery(
        self, alert_id: int, deliveries: dict[str, str], delivered: bool
    ) -> None:
        with self.write() as conn:
            _budgets.record_delivery(conn, alert_id, deliveries, delivered)

    # -- gateway keys ---------------------------------------------------------------------

    def create_key(
        self,
        *,
        name: str,
        tenant: str,
        department: str,
        user: str | None = None,
        users: tuple[str, ...] = (),
    ) -> tuple[ApiKey, str]:
        with self.write() as conn:
            return _keys.create_key(
                conn, name=name, tenant=tenant, department=department, user=user, users=users
            )

    def find_key(self, secret: str) -> ApiKey | None:
        """The live key ``secret`` belongs to, or None; revocation counts at once."""
        with self.read() as conn:
            return _keys.find_key(conn, secret)

    def keys(self) -> list[ApiKey]:
        with self.read() as conn:
            return _keys.list_keys(conn)

    def revoke_key(self, key_id: int) -> None:
        with self.write() as conn:
            if not _keys.revoke_key(conn, key_id):
                raise LedgerError(f"no live key with id {key_id}; see `ometer keys list`")

    def dispose(self) -> None:
        self.journal.close()
        self.engine.dispose()


def _is_lock_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


_shared: dict[str, Ledger] = {}
_shared_lock = threading.Lock()


def open_ledger(url: str, *, wait: float = DEFAULT_WAIT) -> Ledger:
    """The process-wide ledger for ``url``: one engine and one migration check per URL."""
    with _shared_lock:
        ledger = _shared.get(url)
        if ledger is None:
            ledger = _shared[url] = Ledger(url, wait=wait)
        return ledger


def close_ledger(url: str) -> None:
    """Dispose of the process-wide ledger for ``url``, e.g. before its file is replaced."""
    with _shared_lock:
        ledger = _shared.pop(url, None)
    if ledger is not None:
        ledger.dispose()


def close_ledgers() -> None:
    """Dispose of every process-wide ledger (tests, and long-running hosts on shutdown)."""
    with _shared_lock:
        ledgers = list(_shared.values())
        _shared.clear()
    for ledger in ledgers:
        ledger.dispose()
