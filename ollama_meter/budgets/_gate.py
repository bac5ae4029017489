"""The budget gate: admission before a call, settlement and alerts after it.

Every call a hard budget covers is admitted on its bound (the most it can cost,
see ``_estimate``): spent + held + bound must fit the limit. What a process holds
lives in the ledger as a **lease**: one reservation row per budget, tenant and
period, written in one transaction (SQLite's write lock, or an advisory lock per
budget on PostgreSQL) that also reads the settled spend (from rollups) and what
other processes hold. Calls are then admitted against the lease in memory; when
one's bound does not fit what is left, the lease is renewed: spend read again, a
new slice taken. The slice is a share of the room left (``lease_share``), never
less than the call's bound, so it shrinks as the budget nears its limit and the
last calls are decided exactly, in the database.

Invariant, across processes and gateways: settled spend plus every live lease is
at most the limit, and a lease always covers the bounds of its calls in flight;
so calls together can never spend past the limit. A call that has ended holds its
cost, not its bound, and that stays in its lease until a renewal finds its span in
the ledger, whose spend counts it from then on (the call, settled or not yet, holds nothing
more): counted once, and only ever on the safe side. A call whose span went to the spool
(the database was away) holds its cost by span id (``Lease.kept``) until a transaction finds
the span in the ledger; the same transaction reads the spend after that, so the cost is
counted once, and always at least once. A lease that is not renewed expires (a crashed process
frees its room after ``reservation_ttl``, by the ledger's clock: ``store.clock``, shared by
every host); one in use is renewed well before.

The CLI uses ``lease_share=0``: a lease of exactly the call's bound, given back
when the call settles, which is a per-call reservation. The gateway takes a
quarter of the room and gives back what it did not use when idle or shutting down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ollama_meter._forks import renew_after_fork
from ollama_meter._logging import Throttled
from ollama_meter._reloaded import Reloaded, WouldBlock
from ollama_meter.budgets._alerts import AlertDispatcher
from ollama_meter.budgets._estimate import Estimate
from ollama_meter.budgets._keeper import LeaseKeeper
from ollama_meter.budgets._leases import (
    IDLE_RELEASE_SECONDS,
    RESERVATION_TTL,
    Lease,
    Reservation,
    Slot,
    Watches,
    hold_id,
    holder_of,
    in_force,
    settled,
    stale_unless_hard,
)
from ollama_meter.budgets._refusals import Refusals, mismatch, refusal, refused_alerts
from ollama_meter.budgets._store import Known
from ollama_meter.budgets._thresholds import ThresholdAlerts
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import once_more_if_ended
from ollama_meter.periods import current_period
from ollama_meter.records import Alert, Budget, LeaseKey

if TYPE_CHECKING:
    from ollama_meter.budgets._store import BudgetStore, BudgetWrites

log = logging.getLogger("ollama_meter.budgets")

_US = timedelta(microseconds=1)


class BudgetGate(ThresholdAlerts, LeaseKeeper):
    """Budgets from one store, the ledger (reloaded every ``ttl`` seconds), and this process's leases."""

    def __init__(
        self,
        ledger: BudgetStore,
        *,
        tz: ZoneInfo,
        zone: Callable[[], ZoneInfo] | None = None,
        alerts: AlertDispatcher | None = None,
        ttl: float = 5.0,
        reservation_ttl: timedelta = RESERVATION_TTL,
        lease_share: float = 0.0,
        idle_release: float = IDLE_RELEASE_SECONDS,
        clock: Any = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.tz, self._zone = tz, zone  # the ledger's midnights; ``zone`` reads them again
        self.alerts = alerts
        self._reservation_ttl = reservation_ttl
        self.lease_share = lease_share
        self._clock = clock
        self._leases: dict[Slot, Lease] = {}
        self._returning: set[str] = set()  # rows of leases taken out, being given back
        self._stranded: set[str] = set()  # rows a give-back failed to drop (see _give_back)
        self._watch = Watches()
        self._refusals_said: set[tuple[LeaseKey, int, int]] = set()  # claimed in the ledger
        self._refused = Refusals(recheck=ttl, clock=clock)  # said again without the ledger
        self._lock = threading.Lock()
        self._idle_release = idle_release
        self._keeper: threading.Thread | None = None
        self._closed = False  # shutting down: a lease goes back as soon as no call holds it
        self._abandoned = False  # closed without giving back: the keeper ends at once
        self._closing = threading.Event()  # wakes the keeper when the gate closes
        self._failures = Throttled(log)
        # the last ``now`` a caller gave, and this clock's reading then: the keeper's time
        self._seen = (datetime.min.replace(tzinfo=UTC), 0.0)
        self.renewals = 0  # lease renewals so far: the admissions that had to go to the ledger
        # While the database is away the budgets loaded before stay in force, so callers
        # no budget covers keep being served.
        self.version: str | None = None  # budgets_version as they were last loaded
        self._budgets = Reloaded(self._load_budgets, ttl=ttl, what="budgets", changed=self._changed)
        renew_after_fork(self)

    def _load_budgets(self) -> Known:
        """The budgets, and the zone their periods begin in (``db rollup --zone`` moves it)."""
        if self._zone is not None:
            self.tz = self._zone()
        self.version = self.ledger.budgets_version()  # read first: a change after it is seen
        known = Known(*self.ledger.readable_budgets())
        stale_unless_hard(list(self._leases.values()), known.budgets)
        return known

    def _changed(self) -> bool:
        """A budget saved or removed since they were read: the background refresh asks (after
        a gateway's commit of spans, the commit's own read of it is compared with
        :attr:`version`: ``_behind.settled``), so a lowered limit is in force within a commit."""
        return self.ledger.budgets_version() != self.version

    def _after_fork(self) -> None:
        """A forked child's gate holds no lease: the parent's rows are the parent's (a child
        admitting against one in memory, or writing its row, would spend or drop the parent's
        hold), and the parent's keeper thread is not there."""
        self._leases, self._returning, self._watch = {}, set(), Watches()  # (a lock held at fork)
        self._stranded = set()
        self._lock = threading.Lock()
        self._keeper = None
        self._closing = threading.Event()

    def budgets_for(self, tenant: str, department: str) -> list[Budget]:
        """The budgets covering a caller (read every ``ttl`` s); LedgerError: one unreadable."""
        return self._budgets.get().covering(tenant, department)

    def cached_budgets_for(self, tenant: str, department: str) -> list[Budget] | None:
        """What :meth:`budgets_for` would say, without touching the ledger; None when stale
        (or when only its LedgerError would say it)."""
        known = self._budgets.peek()
        if known is None or known.unreadable_for(tenant, department):
            return None
        return known.covering(tenant, department)

    def reload_soon(self) -> None:
        self._budgets.expire()  # read again on the next call (this process changed them)

    @property
    def cache(self) -> Reloaded[Known]:
        return self._budgets  # as loaded from the ledger (a server refreshes them meanwhile)

    # -- admission ---------------------------------------------------------------------------

    def admit(
        self,
        *,
        call_id: str,
        tenant: str,
        department: str,
        estimate: Estimate,
        now: datetime,
        blocking: bool = True,
        model: str = "",
        adopt: str | None = None,
        alone: str | None = None,
    ) -> Reservation | None:
        """Hold the call's bound in every hard budget covering it, or raise :class:`BudgetExceeded`.

        ``blocking`` False admits in memory only (an event loop's way): where the ledger
        is needed (budgets to load, a lease to renew or give back) it raises
        :class:`WouldBlock` having changed nothing that matters; ask again from a thread.
        So it does while another thread holds the leases for a ledger transaction.

        ``adopt``: the span id an ometer client names its own record of this very call by (a
        gateway on the client's ledger). The client held the call's bound before sending it,
        in rows of its own (:func:`hold_id`); they are taken over in the transaction that
        admits the call (dropped there, their money room for it), never held twice. Only rows
        of this call's budgets, tenant and period are taken, and only the span id names
        them: it is random, and only the client and the gateway it calls through know it.
        A call charged to another department, or of another model, takes none (the client's
        rows are named by its department and ``model`` too: :func:`holder_of`).

        ``alone``: hold this call in rows of its own, named by this id (the one the call goes by
        along a chain of meters), as a process with ``lease_share`` 0 does, though this one
        shares its leases: a gateway that may relay the call to another on its ledger, which
        takes such rows over (a shared lease it cannot: the call was held twice, and refused
        where it had room).
        """
        if blocking:
            covering = self.budgets_for(tenant, department)
        else:
            covering = self._budgets.snapshot().covering(tenant, department)
        hard = [b for b in covering if b.hard]
        if not hard:
            return None
        for budget in hard:
            if estimate.currency != budget.currency and estimate.amount > 0:
                window = current_period(budget.period, tz=self.tz, now=now)
                raise mismatch(budget, tenant, window, estimate, now)
        refused: list[Alert] | None = None  # set when refused: the alerts the refusal fires
        said: list[Alert] = []
        own = alone is not None or not self.lease_share
        holder = holder_of(alone or call_id, department, model) if own else ""  # rows of its own
        if blocking and adopt is None:  # a refusal read a moment ago is said again, no lock
            try:
                self._refused.again(
                    hard, tenant, estimate.amount, now, self.tz, said, estimate.hint
                )
            except BudgetExceeded:
                self._alert_refused(tenant, department, now, said)
                raise
        # The lock is held across ledger transactions (a renewal, the keeper's), which may
        # wait seconds for another process's write lock: an event loop never waits for it.
        if not self._lock.acquire(blocking=blocking):
            raise WouldBlock("this process's budget leases are being written to the ledger")
        try:
            if not blocking and self._idle(now):
                raise WouldBlock("idle budget leases are given back in the ledger")
            self._release_idle(now)
            leases = [self._lease(b, tenant, now, holder) for b in hard]
            short = [le for le in leases if adopt or le.stale or le.free < estimate.amount]
            if short:
                if not blocking:
                    raise WouldBlock("a budget lease is renewed in the ledger")
                cap, hint = estimate.amount, estimate.hint
                try:  # one read while this thread waited for the lock: not read again
                    if adopt is None:  # (the client's hold may be the room a refusal lacked)
                        again = [le.budget for le in short]
                        self._refused.again(again, tenant, cap, now, self.tz, said, hint)
                    adopted = None if adopt is None else holder_of(adopt, department, model)
                    # A session the server ended under it (pg_terminate_backend): once more.
                    once_more_if_ended(lambda: self._renew(short, cap, now, said, adopted, hint))
                except BaseException as exc:
                    self._renewal_failed(leases, now, exc)
                    raise
            for lease in leases:
                lease.in_flight[call_id] = estimate.amount
                lease.last_used = self._clock()
            self._keep(now)
        except BudgetExceeded:
            refused = said
            raise
        finally:
            self._lock.release()
            if refused is not None:
                self._alert_refused(tenant, department, now, refused)
        keys = tuple(le.key for le in leases)
        rows = tuple(le.row_id for le in leases)
        ids = tuple(k.budget_id for k in keys)
        return Reservation(call_id, ids, keys, estimate.amount, rows, holder, estimate.usage)

    def _renewal_failed(self, leases: list[Lease], now: datetime, exc: BaseException) -> None:
        """Drop the leases that hold nothing (new ones; lock held): kept, they would look idle,
        and every admission would wait to give them back. A refusal wrote nothing; any other
        failure may have come after its COMMIT reached the server (one that froze as it took
        it, then ran again), so their rows go with the next write (``_stranded``: no admission
        waits for that on a ledger still away). Forgotten, such a row held its slice for 15
        minutes beside the next one taken (25 of 100 held twice: test_unanswered_renewal.py)."""
        unsure = not isinstance(exc, BudgetExceeded)
        for lease in leases:
            if not (lease.amount or lease.in_flight or lease.kept):
                slot = lease.slot
                if self._leases.get(slot) is lease:
                    del self._leases[slot]
                    if unsure:
                        self._stranded.add(lease.row_id)
        if unsure:
            self._keep(now)  # its thread drops them within 30 s, if no renewal does first

    def _lease(self, budget: Budget, tenant: str, now: datetime, holder: str) -> Lease:
        window = current_period(budget.period, tz=self.tz, now=now)
        assert budget.id is not None
        slot = (LeaseKey(budget.id, tenant, window.start), holder)
        lease = self._leases.get(slot)
        if lease is None:
            before = current_period(budget.period, tz=self.tz, now=window.start - _US).start
            lease = self._leases[slot] = Lease(budget, tenant, window, holder, before)
        elif lease.budget != budget:
            # The budget was changed (a new limit, thresholds): the same lease row, with the
            # calls it holds, is renewed against it. A new row would strand the old one's
            # money until it expires, and with it every call a lowered limit still fits.
            lease.budget, lease.stale = budget, True
        elif lease.due(now, self._clock(), self._reservation_ttl):
            lease.stale = True  # renew well before its row expires in the ledger
        return lease

    def _renew(
        self,
        leases: list[Lease],
        need: int,
        now: datetime,
        refused: list[Alert],
        adopt: str | None = None,
        hint: str = "",
    ) -> None:
        """Read spend and others' holds, and take new slices, for ``leases`` in one transaction
        (first taking over the per-call holds named by ``adopt``, the call's client's);
        ``hint`` says in a refusal what the call can change to fit.

        Raises :class:`BudgetExceeded` (writing nothing) when ``need`` does not fit one of them;
        ``refused`` then has an alert per budget whose spend leaves no room for it. A lease a
        reload found not hard meanwhile (``unheld``) stays stale: read again before use."""
        self.renewals += 1
        unheld = {id(le): le.unheld for le in leases}
        with self.ledger.budget_transaction() as store:
            store.lock([le.budget.id for le in leases if le.budget.id is not None])
            at = store.clock(now)  # after the lock: a wait for it does not age the time
            stranded = self._drop_stranded(store)
            if in_force(store, leases):  # read again before the next admission
                self._budgets.expire()
            for lease in leases if adopt else ():  # this call's: not another's hold, nor twice
                store.take_hold(hold_id(adopt or "", lease.key.budget_id), lease.key)
            sizes: list[tuple[Lease, int, int]] = []
            refusals: list[BudgetExceeded] = []
            # the spend counts the calls found; (a copy: a give-back ends without the lock)
            renewing, keys = set(map(id, leases)), {le.key for le in leases}
            mates = [m for m in self._leases.values() if m.key in keys and id(m) not in renewing]
            found, reads = settled(store, leases, at, tuple(self._returning), mates)
            for lease, spent, others in reads:
                budget = lease.budget
                mine = lease.holds(found)
                room = budget.limit - spent - others - mine
                over = spent >= budget.limit or spent + need > budget.limit
                if over or need > room:  # held > 0: only calls in flight are in the way
                    held = 0 if over else others + mine
                    refusals.append(refusal(lease, spent, held, need, now, self.tz, hint))
                    refused += refused_alerts(lease, spent, held, need)
                    self._refused.note(lease, spent, held, need, now)
                    continue
                slice_ = need if lease.holder else max(need, int(room * self.lease_share))
                sizes.append((lease, mine + slice_, spent))
            if refusals:
                # The budget that frees up last: a retry any sooner (a daily budget's calls in
                # flight settled, its midnight come) is refused again by a spent month.
                raise max(refusals, key=lambda r: r.retry_after)
            for lease, amount, _ in sizes:
                self._write_lease(store, lease, amount, now)
        # Only what the ledger committed is this process's to admit against.
        self._stranded.difference_update(stranded)
        renewed = self._clock()
        for lease, amount, spent in sizes:
            lease.amount, lease.renewed, lease.spent = amount, renewed, spent
            lease.used, lease.stale = 0, lease.unheld != unheld[id(lease)]
            lease.counted(found)

    def _write_lease(self, store: BudgetWrites, lease: Lease, amount: int, now: datetime) -> None:
        lease.expires_at = now + self._reservation_ttl  # if not committed, renewed says due
        store.put_lease(lease.row_id, lease.key, amount, store.clock(now) + self._reservation_ttl)

    def ended(self, reservation: Reservation, cost: int) -> None:
        """The call cost ``cost``: what it holds from now until it settles, not its bound.
        No lock (an event loop calls it): only its own settle, later, takes its entry out."""
        self._refused.forget(reservation.keys)  # room may have come back
        for lease in filter(None, map(self._leases.get, reservation.slots)):
            if reservation.id in lease.in_flight:
                lease.in_flight[reservation.id] = cost

    def settle(self, reservation: Reservation, *, recorded: bool = True) -> None:
        """The call is over and its span written (``recorded``) or kept elsewhere.

        With ``lease_share`` 0 the lease is given back at once; otherwise nothing is
        written now: the next renewal reads the call's actual cost from the ledger. A
        lease left with less than such a call needs and nothing in flight is a fragment
        only this process could use: it goes back at once, so near the limit another
        process's call can have that room."""
        give_back: list[Lease] = []
        with self._lock:
            self._refused.forget(reservation.keys)
            for slot in reservation.slots:
                if (lease := self._leases.get(slot)) is None:
                    continue
                held = lease.in_flight.pop(reservation.id, 0)  # its bound, or its cost (ended)
                if recorded:
                    lease.used += held
                elif held:  # a call that cost nothing holds nothing while its span waits
                    lease.kept[reservation.id] = held
                idle = not lease.in_flight and not lease.kept
                if idle and (self._closed or reservation.holder or lease.free < reservation.amount):
                    give_back.append(self._returned(slot))
            if self._closed and not self._leases:
                self._closing.set()  # the keeper's work is done: it ends now, not in a round
        if give_back:
            self._give_back(give_back)

    def _idle(self, now: datetime) -> list[Slot]:
        """Leases no call has used for a while, or whose period is over (lock held)."""
        return [
            slot
            for slot, lease in self._leases.items()
            if not lease.in_flight
            and not lease.kept
            and (
                self._closed
                or self._clock() - lease.last_used > self._idle_release
                or lease.window.end <= now
            )
        ]

    def _release_idle(self, now: datetime) -> None:
        """Give back the idle leases (lock held)."""
        idle = self._idle(now)
        if idle:
            self._give_back([self._returned(slot) for slot in idle])

    def _returned(self, slot: Slot) -> Lease:
        """Take out a lease to give back (lock held; all its calls are in the ledger): its row,
        dropped after the lock is let go, is no other process's hold to a renewal meanwhile."""
        lease = self._leases.pop(slot)
        self._returning.add(lease.row_id)
        return lease

    def close(self, *, give_back: bool = True) -> None:
        """Give back every lease with no call in flight (a gateway shutting down); the others
        go back as their calls settle. ``give_back=False``: none goes back (their rows
        expire), and the keeper ends even while calls hold leases."""
        with self._lock:
            self._closed, self._abandoned = True, not give_back
            done = [
                k for k, lease in self._leases.items() if not lease.in_flight and not lease.kept
            ]
            leases = [self._returned(k) for k in done]
            self._closing.set()  # the keeper ends once no call is in flight
        if (leases or self._stranded) and give_back:
            self._give_back(leases)
