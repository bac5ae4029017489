"""The ledger: one object per database, shared by every entry point of a process.

Owns the engine, first-use migration and transactions. Writes go through
:meth:`Ledger.record`, one transaction per batch; the meter's
:class:`GroupCommitWriter` batches concurrent callers into it. A write the
database refuses past every retry goes to the spool and is recorded later.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from ollama_meter.budgets import Budget, PastCall
from ollama_meter.config import default_data_dir
from ollama_meter.errors import BudgetError, LedgerError, PricingError
from ollama_meter.ledger import _budgets, _keys, _prices, _spans
from ollama_meter.ledger._engine import SQLITE_BUSY_TIMEOUT_MS, create_ledger_engine, sqlite_path
from ollama_meter.ledger._keys import ApiKey
from ollama_meter.ledger._migrate import ensure_current
from ollama_meter.ledger._spool import Spool
from ollama_meter.ledger.models import SpanRow
from ollama_meter.meter.span import SpanRecord
from ollama_meter.pricing import PriceRule

_WRITE_ATTEMPTS = 5
log = logging.getLogger("ollama_meter.ledger")


def default_spool_dir(url: str) -> Path:
    """Beside a SQLite file; in the user data dir, per database, for servers."""
    path = sqlite_path(make_url(url))
    if path is not None:
        return path.with_name(f"{path.name}.spool")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return default_data_dir() / "spool" / digest


class Ledger:
    """A ledger database at ``url`` (any SQLAlchemy URL), migrated to the current schema."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        spool_dir: Path | None = None,
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        retry_delay: float = 0.05,
    ) -> None:
        self.url = url
        self.engine = create_ledger_engine(url, busy_timeout_ms=busy_timeout_ms)
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._retry_delay = retry_delay
        self.spool = Spool(spool_dir or default_spool_dir(url))
        self._spooled = False
        if migrate:
            self._retry_locked(
                lambda: ensure_current(self.engine), f"cannot open the ledger at {self.display_url}"
            )
            self.recover()

    def recover(self) -> int:
        """Record spans a refused write left in the spool; how many there were."""
        if not self.spool.pending():
            return 0
        try:
            count = self.spool.drain(self._record_now)
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
        with self._failures_named(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._failures_named(), self.engine.connect() as conn:
            if self._sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _failures_named(self) -> Iterator[None]:
        """A database failure (server down, disk full, locked) leaves as one LedgerError."""
        try:
            yield
        except DBAPIError as exc:
            raise LedgerError(f"the ledger at {self.display_url} failed: {exc.orig}") from exc

    def record(self, spans: Sequence[SpanRecord]) -> None:
        """Make ``spans`` durable: committed in one transaction, or else spooled.

        Re-recording a span id is a no-op. SQLite's busy timeout already waits for
        other writers; a few retries ride out lock storms; only then do the spans
        go to the spool (and a warning to the log) instead of being lost.
        """
        try:
            self._record_now(spans)
        except LedgerError as exc:
            try:
                where = self.spool.put(spans)
            except OSError as spool_exc:
                raise LedgerError(f"{exc}; the spool failed too: {spool_exc}") from exc
            self._spooled = True
            log.warning("%s; kept them in %s to be recorded once the database answers", exc, where)
            return
        if self._spooled:  # the database answers again: bring in what waited
            self._spooled = False
            self.recover()

    def _record_now(self, spans: Sequence[SpanRecord]) -> None:
        def insert() -> None:
            with self.write() as conn:
                _spans.insert_spans(conn, spans)

        self._retry_locked(
            insert, f"could not write {len(spans)} span(s) to the ledger at {self.display_url}"
        )

    def _retry_locked(self, action: Callable[[], object], failure: str) -> None:
        """Run ``action``, again with backoff while the database reports a lock.

        The busy timeout covers ordinary waits; SQLite still answers "locked" at
        once in a few races (a fresh file switching to WAL, a snapshot gone stale),
        and those pass on a second try. Anything else, or the last try, is one
        LedgerError starting with ``failure``.
        """
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                action()
                return
            except (OperationalError, LedgerError) as exc:
                cause = exc if isinstance(exc, OperationalError) else exc.__cause__
                locked = isinstance(cause, DBAPIError) and _is_lock_error(cause)
                if attempt == _WRITE_ATTEMPTS or not locked:
                    if isinstance(cause, DBAPIError):
                        raise LedgerError(f"{failure}: {cause.orig}") from cause
                    raise
                log.debug("%s: database locked, try %d of %d", failure, attempt, _WRITE_ATTEMPTS)
                time.sleep(self._retry_delay * 2**attempt)

    def latest(self, where: _spans.SpanFilter, limit: int = 20) -> list[SpanRecord]:
        with self.read() as conn:
            return _spans.latest_spans(conn, where, limit)

    def count(self, where: _spans.SpanFilter | None = None) -> int:
        clauses = where.clauses() if where else []
        with self.read() as conn:
            return int(
                conn.execute(select(func.count()).select_from(SpanRow).where(*clauses)).scalar_one()
            )

    # -- price rules -----------------------------------------------------------------

    def price_rules(self) -> list[PriceRule]:
        with self.read() as conn:
            return _prices.list_rules(conn)

    def add_price_rule(self, rule: PriceRule) -> PriceRule:
        with self.write() as conn:
            return _prices.add_rules(conn, [rule])[0]

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
        with self.write() as conn:
            return _budgets.save_budget(conn, budget)

    def remove_budget(self, budget_id: int) -> None:
        with self.write() as conn:
            if not _budgets.remove_budget(conn, budget_id):
                raise BudgetError(f"no budget with id {budget_id}; see `ometer budget list`")

    def sync_budgets(self, source: str, budgets: Sequence[Budget]) -> bool:
        with self.write() as conn:
            return _budgets.sync_source(conn, source, budgets)

    def alerts(
        self, *, undelivered_only: bool = False, max_attempts: int | None = None
    ) -> list[Any]:
        with self.read() as conn:
            return _budgets.alerts(
                conn, undelivered_only=undelivered_only, max_attempts=max_attempts
            )

    def record_alert_delivery(
        self, alert_id: int, deliveries: dict[str, str], delivered: bool
    ) -> None:
        with self.write() as conn:
            _budgets.record_delivery(conn, alert_id, deliveries, delivered)

    # -- gateway keys ---------------------------------------------------------------------

    def create_key(self, *, name: str, tenant: str, department: str) -> tuple[ApiKey, str]:
        with self.write() as conn:
            return _keys.create_key(conn, name=name, tenant=tenant, department=department)

    def keys(self) -> list[ApiKey]:
        with self.read() as conn:
            return _keys.list_keys(conn)

    def revoke_key(self, key_id: int) -> None:
        with self.write() as conn:
            if not _keys.revoke_key(conn, key_id):
                raise LedgerError(f"no live key with id {key_id}; see `ometer keys list`")

    def dispose(self) -> None:
        self.engine.dispose()


def _is_lock_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


_shared: dict[str, Ledger] = {}
_shared_lock = threading.Lock()


def open_ledger(url: str) -> Ledger:
    """The process-wide ledger for ``url``: one engine and one migration check per URL."""
    with _shared_lock:
        ledger = _shared.get(url)
        if ledger is None:
            ledger = _shared[url] = Ledger(url)
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
