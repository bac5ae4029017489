"""The ledger: one object per database, shared by every entry point of a process.

Owns first-use migration and every query the rest of the package asks, as named
methods: spans (latest, paging, costs), aggregates for reports and budgets (:mod:`._reads`),
price rules, budgets and their transactions, alerts, gateway keys and rate limits. Writes go
through :meth:`~ollama_meter.ledger._durable.DurableLedger.record`, one
transaction per batch; the meter's group-commit writer batches concurrent
callers into it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select

from ollama_meter._lazy import lazy_modules
from ollama_meter._runtime import runtime
from ollama_meter.errors import BudgetError, LedgerError, PricingError, ValidationError
from ollama_meter.ledger import (
    _alert_rows,
    _budgets,
    _history,
    _meta,
    _prices,
    _rebuild,
    _rezone,
    _spans,
    _zonerules,
)
from ollama_meter.ledger._deadline import recording_nothing
from ollama_meter.ledger._durable import DurableLedger
from ollama_meter.ledger._engine import DEFAULT_WAIT
from ollama_meter.ledger._keyring import KeyRing, no_live_key, row_id
from ollama_meter.ledger._migrate import ensure_current, waiting_for_migration
from ollama_meter.ledger._named import Named
from ollama_meter.ledger._readable import Readable
from ollama_meter.ledger._reads import Aggregates
from ollama_meter.ledger._siblings import record_siblings
from ollama_meter.ledger._types import from_us
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import Alert, Budget, Limit, PastCall, PriceRule, SpanRecord

if TYPE_CHECKING:
    from ollama_meter.ledger import _currencies, _keys, _limits
else:  # loaded when first used: a command that reads spans needs none of them
    lazy_modules(globals(), "ollama_meter.ledger", "_currencies _keys _limits")

log = logging.getLogger("ollama_meter.ledger")


class Ledger(DurableLedger, Named, Readable, Aggregates, KeyRing):
    """A ledger database at ``url`` (any SQLAlchemy URL), migrated to the current schema."""

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = True,
        spool_dir: Path | None = None,
        wait: float = DEFAULT_WAIT,
        retry_delay: float = 0.05,
        zone: str | None = None,
    ) -> None:
        """``zone`` (an IANA name, the configured ``OMETER_TIMEZONE``) is where a ledger that
        holds nothing yet begins its day and month rollups (see :meth:`adopt_zone`)."""
        super().__init__(url, spool_dir=spool_dir, wait=wait, retry_delay=retry_delay)
        self._migrate, self._zone = migrate, zone
        if migrate:
            with recording_nothing():
                self._make_current()
            self.recover()
            record_siblings(self)  # spooled at another address of its database

    def _make_current(self) -> None:
        """The schema at head, rollups built, the zone adopted if the ledger has none yet."""
        failure = f"cannot open the ledger at {self.display_url}"

        def made() -> None:
            self._retry_locked(lambda: ensure_current(self.engine), failure)

        waiting_for_migration(
            made, self.engine, self.display_url
        )  # another process's, maybe minutes
        _rebuild.build_if_stale(self)
        if self._zone is not None:
            self.adopt_zone(self._zone)
        self._check_zone_rules()

    def _check_zone_rules(self) -> None:
        """Say once, at open, when this host's zone data cuts the ledger's days otherwise than
        the data its cells were cut with (:mod:`._zonerules`); a ledger from before the
        fingerprint was kept takes this host's."""
        try:
            with self.read() as conn:
                note = _zonerules.zone_rules_differ(conn)
                missing = _meta.get_meta(conn, _zonerules.KEY) is None
                missing = missing and _meta.zone_name(conn) != "UTC"
            if missing:
                with self.write() as conn:
                    if _meta.get_meta(conn, _zonerules.KEY) is None:
                        _zonerules.record_zone_rules(conn)
        except LedgerError:  # a zone this host lacks: each use of it says so
            return
        if note is not None:
            log.warning("%s", note)

    def on_new_file(self) -> None:
        """A new or restored file at the path is made a ledger, as a process starting would."""
        named = self.forget_identity()  # another file: another ledger
        if self._migrate:
            self._make_current()
        if named:
            self.rename()

    def adopt_zone(self, zone: str) -> bool:
        """Begin day and month rollups at ``zone``'s midnights, if the ledger has none yet.

        A ledger that holds rollups keeps its zone (changing it is a rebuild:
        ``ometer db rollup --zone``). True when the zone was set now.
        """
        if not self.reading(_rezone.can_adopt_zone):
            return False
        with self.write() as conn:
            return _rezone.adopt_zone(conn, zone)

    def zone(self) -> str:
        """The zone whose midnights begin this ledger's day and month rollups."""
        return self.reading(_meta.zone_name)

    def chosen_zone(self) -> str | None:
        """The zone the ledger was given (when made, or by ``ometer db rollup --zone``); None
        for a ledger from before zones were kept, whose rollups are cut in UTC."""
        return self.reading(lambda conn: _meta.get_meta(conn, "zone"))

    # -- reading spans ---------------------------------------------------------------------

    def latest(self, where: _spans.SpanFilter, limit: int = 20) -> list[SpanRecord]:
        return self.reading(lambda conn: _spans.latest_spans(conn, where, limit))

    def count(self, where: _spans.SpanFilter | None = None) -> int:

        def counted(conn: Connection) -> int:
            clauses = where.clauses(conn) if where else []
            return int(
                conn.execute(select(func.count()).select_from(SPANS).where(*clauses)).scalar_one()
            )

        return self.reading(counted)

    def pruned_before(self) -> datetime | None:
        """The prune horizon: spans that started before it are gone (rollups kept); None if none."""
        horizon = self.reading(_meta.pruned_before)
        return None if horizon is None else from_us(horizon)

    def names(self, column: str) -> list[str]:
        """Every tenant, department, user or model some span has, sorted (month rollups)."""
        from ollama_meter.ledger._cells import ANYONE, Grain
        from ollama_meter.ledger.models import ROLLUPS

        named = ROLLUPS.c[column]
        query = select(named).distinct().where(ROLLUPS.c.grain == int(Grain.MONTH), named != "")
        if column == "user":  # a model may be called "*"; a user never is (the overview's)
            query = query.where(named != ANYONE)
        return self.reading(lambda conn: sorted(conn.scalars(query)))

    def page_after(self, where: _spans.SpanFilter, after: str, limit: int) -> list[SpanRecord]:
        """The next ``limit`` matching spans with ids above ``after`` (keyset paging)."""
        return self.reading(lambda conn: _spans.page_after(conn, where, after, limit))

    def update_costs(
        self, spans: Sequence[SpanRecord], rules: Sequence[PriceRule] | None = None
    ) -> list[SpanRecord]:
        """Write the cost columns of recorded spans back, rollups with them, in one transaction;
        the spans that moved, as they were stored (see :func:`_spans.update_costs`)."""
        with self.write() as conn:
            return _spans.update_costs(conn, spans, rules)

    # -- price rules -----------------------------------------------------------------

    def price_rules(self) -> list[PriceRule]:
        return self.reading(_prices.list_rules)

    def price_rules_version(self) -> tuple[object, ...]:
        """What changes whenever a rule is added or removed: one short read."""
        return self.reading(_prices.rules_version)

    def budgets_version(self) -> str | None:
        """What changes whenever ometer saves or removes a budget: one short read."""
        return self.reading(_budgets.budgets_version)

    def add_price_rule(self, rule: PriceRule) -> PriceRule:
        """Add ``rule``, or return the identical rule already there (the same rule is the same rule)."""
        return self.add_price_rules([rule])[0][0]

    def add_price_rules(self, rules: Sequence[PriceRule]) -> list[tuple[PriceRule, bool]]:
        """Add every rule not already present and in force as given, in one transaction;
        (rule, whether it is new) each.

        Refused as a whole if a rule would leave a budget unable to count its calls.
        """
        with self.write() as conn:
            existing = _prices.RuleIndex(_prices.readable_rules(conn)[0])
            result: list[tuple[PriceRule, bool]] = []
            for rule in rules:
                same = existing.in_force_as(rule)
                if same is None:
                    same = _prices.add_rules(conn, [rule])[0]
                    existing.add(same)
                    result.append((same, True))
                else:
                    result.append((same, False))
            _currencies.check_rules(conn, [r for r, new in result if new])
            return result

    def remove_price_rule(self, rule_id: int) -> None:
        with self.write() as conn:
            if not (row_id(rule_id) and _prices.remove_rule(conn, rule_id)):
                raise PricingError(f"no price rule with id {rule_id}; see `ometer pricing list`")

    def sync_price_rules(
        self,
        source: str,
        content: bytes,
        rules: Callable[[], Sequence[PriceRule]],
        *,
        formerly: str | None = None,
    ) -> bool:
        """Make the rules from ``source`` (a pricing file) match its content; True if they changed.

        ``rules`` parses the content, called only when it differs from what the ledger
        has. Unchanged (every command but the first), this is one read: a command that
        only reads never waits for, or fails on, a writer's lock because of the file.
        ``formerly``: the source's name under an older ometer, whose rules it takes over.
        """
        digest = hashlib.sha256(content).hexdigest()
        if self.reading(lambda conn: _prices.file_digest(conn, source)) == digest:
            return False
        parsed = rules()
        with self.write() as conn:
            took = formerly is not None and _prices.take_over(conn, source, formerly)
            if _prices.file_digest(conn, source) == digest:  # another process got there first
                return took
            _prices.replace_source(conn, source, parsed, digest)
            _currencies.check_rules(conn, parsed)
            return True

    def recent_usage(self, model: str, limit: int = 20) -> list[PastCall]:
        """Usage of the latest successful calls to ``model``, in any spelling of it: what
        budgets estimate from."""
        return self.reading(lambda conn: _history.recent_usage(conn, model, limit))

    # -- budgets and alerts --------------------------------------------------------------

    def budgets(self) -> list[Budget]:
        return self.reading(_budgets.list_budgets)

    def save_budget(self, budget: Budget) -> Budget:
        """Insert or replace a budget; refused if it could not count calls (currency)."""
        with self.write() as conn:
            _currencies.check_budgets(conn, [budget])
            return _budgets.save_budget(conn, budget)

    def remove_budget(self, budget_id: int) -> None:
        with self.write() as conn:
            if not (row_id(budget_id) and _budgets.remove_budget(conn, budget_id)):
                raise BudgetError(f"no budget with id {budget_id}; see `ometer budget list`")

    def sync_budgets(self, source: str, budgets: Sequence[Budget]) -> bool:
        """Make the budgets from ``source`` exactly ``budgets``; True if they changed.

        Unchanged, this is one read (see :meth:`sync_price_rules`).
        """
        if not self.reading(lambda conn: _budgets.source_differs(conn, source, budgets)):
            return False
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
        self,
        *,
        undelivered_only: bool = False,
        max_attempts: int | None = None,
        from_id: int = 0,
        limit: int | None = None,
    ) -> list[Alert]:
        return self.reading(
            lambda conn: _alert_rows.alerts(
                conn,
                undelivered_only=undelivered_only,
                max_attempts=max_attempts,
                from_id=from_id,
                limit=limit,
            )
        )

    def claim_alert_attempt(self, alert_id: int, seconds: float) -> Alert | None:
        """Count an attempt at delivering the alert, hold it ``seconds`` for this process and
        return it as it stands; None when it is delivered or another process is delivering it."""
        now = datetime.now(UTC)
        with self.write() as conn:
            return _alert_rows.claim_attempt(conn, alert_id, now, now + timedelta(seconds=seconds))

    def record_alert_delivery(
        self, alert_id: int, deliveries: dict[str, str], delivered: bool, *, final: bool = True
    ) -> None:
        """What the channels took so far; ``final`` (the attempt is over) ends the claim."""
        with self.write() as conn:
            _alert_rows.record_delivery(conn, alert_id, deliveries, delivered, final=final)

    # -- limits ---------------------------------------------------------------------------

    def limits(self) -> list[Limit]:
        return self.reading(_limits.list_limits)

    def limits_in_force(self) -> tuple[list[Limit], list[tuple[Limit, str]]]:
        """Every limit that can be read, and each row that cannot: its scope, and why."""
        return self.reading(_limits.limits_in_force)

    def set_limit(self, limit: Limit) -> Limit:
        """Store a scope's limits (values left None keep what was stored); a key's take its names."""
        with self.write() as conn:
            if limit.key_id is not None:
                key = _keys.live_key(conn, limit.key_id) if row_id(limit.key_id) else None
                if key is None:
                    raise no_live_key(limit.key_id)
                limit = replace(limit, tenant=key.tenant, department=key.department)
            return _limits.set_limit(conn, limit)

    def remove_limit(self, tenant: str, department: str | None, key_id: int | None) -> None:
        # A name no limit can have is said as such (and one with a byte that is not UTF-8
        # never reaches the database, which cannot encode it).
        if key_id is None and (problem := Limit(tenant, department).problem()):
            raise ValidationError(problem)
        with self.write() as conn:
            known = key_id is None or row_id(key_id)
            if not (known and _limits.remove_limit(conn, tenant, department, key_id)):
                # A key's tenant and department are its own, not the ones given with it.
                scope = f"key {key_id}" if key_id is not None else Limit(tenant, department).scope()
                raise LedgerError(f"no limits set for {scope}; see `ometer limit list`")


def open_ledger(
    url: str, *, wait: float = DEFAULT_WAIT, zone: str | None = None, migrate: bool = True
) -> Ledger:
    """The process-wide ledger for ``url``: one engine and one migration check per URL.

    ``zone`` is adopted by a ledger that holds nothing yet (see :meth:`Ledger.adopt_zone`).
    ``migrate=False`` gives the ledger as it is (``ometer db upgrade``, ``path``), a
    runtime part all the same: whatever a process opens, ending it closes.
    """
    if not migrate:
        build = functools.partial(Ledger, url, wait=wait, migrate=False)
        return runtime().shared("ledger", (url, "as is"), build, Ledger.dispose)
    return runtime().shared(
        "ledger", url, lambda: Ledger(url, wait=wait, zone=zone), Ledger.dispose
    )


def close_ledger(url: str) -> None:
    """Dispose of the process-wide ledger for ``url``, e.g. before its file is replaced."""
    for key in (url, (url, "as is")):
        for ledger in runtime().drop("ledger", key):
            ledger.dispose()


def give_up_held_spans() -> int:
    """Spans the process's ledgers still hold in memory, given one more try each; returns how
    many neither a ledger nor its spool took (saved to a file, or logged, to import)."""
    return sum(ledger.give_up_held() for ledger in runtime().parts("ledger"))


def close_ledgers() -> None:
    """Dispose of every process-wide ledger (tests, and long-running hosts on shutdown).

    The alert dispatchers that record into them close first: one left running retried a
    failed alert a minute later, against a ledger that was gone."""
    runtime().close("alerts")
    for ledger in runtime().drop("ledger"):
        ledger.dispose()
