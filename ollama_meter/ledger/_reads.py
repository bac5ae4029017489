"""What reports, budgets and the dashboard read: sums, histograms and failure counts over a
window, each method one read transaction (one snapshot), whatever number of statements.

Only reads; the sums themselves are :mod:`._aggregate`'s and :mod:`._timings`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_modules
from ollama_meter.ledger import _spans
from ollama_meter.ledger._database import Database

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ollama_meter.ledger import _aggregate, _ranked, _timings
else:  # loaded when first used: a command that reads spans needs neither
    lazy_modules(globals(), "ollama_meter.ledger", "_aggregate _ranked _timings")

Buckets = Sequence[tuple[datetime, datetime]]
"""Time buckets (start, end), in order, with gaps where there were no calls."""


class Aggregates(Database):
    """The ledger's aggregate reads (a part of :class:`~ollama_meter.ledger.Ledger`)."""

    def spend(
        self,
        where: _spans.SpanFilter,
        by: Sequence[str] = (),
        buckets: Buckets = (),
    ) -> list[_aggregate.SpendSums]:
        """Sums per (``by`` groups, time bucket, currency) over ``where``'s window; buckets
        are (start, end), in order, with gaps where there were no calls (see :meth:`days_with_calls`)."""
        return self.spends(where, [(by, buckets)])[0]

    def spends(
        self,
        where: _spans.SpanFilter,
        groupings: Sequence[tuple[Sequence[str], Buckets]],
    ) -> list[list[_aggregate.SpendSums]]:
        """:meth:`spend` for each (``by``, ``buckets``), read as one snapshot: sums the
        database grouped each way agree with each other, a call recorded meanwhile in all
        or in none."""
        return self.spends_ranked(where, groupings, ())[0]

    def spends_ranked(
        self,
        where: _spans.SpanFilter,
        groupings: Sequence[tuple[Sequence[str], Buckets]],
        rankings: Sequence[_ranked.Ranking],
    ) -> tuple[list[list[_aggregate.SpendSums]], list[list[_ranked.Ranked]]]:
        """:meth:`spends`, and each top list of ``rankings`` (see ``_ranked``), read as one
        snapshot: a department's users add up to its sums."""

        def read(
            conn: Connection,
        ) -> tuple[list[list[_aggregate.SpendSums]], list[list[_ranked.Ranked]]]:
            sums = [_aggregate.aggregate_spend(conn, where, by, b) for by, b in groupings]
            return sums, _ranked.aggregate_ranked(conn, where, rankings)

        return self.reading(read)

    def timings(
        self,
        where: _spans.SpanFilter,
        by: Sequence[str] = (),
        buckets: Buckets = (),
    ) -> tuple[list[_aggregate.SpendSums], _timings.HistogramResult]:
        """Sums and latency/TTFT/queue/speed histograms per group, read as one snapshot."""

        def read(conn: Connection) -> tuple[list[_aggregate.SpendSums], _timings.HistogramResult]:
            sums = _aggregate.aggregate_spend(conn, where, by, buckets)
            return sums, _timings.aggregate_histograms(conn, where, by, buckets)

        return self.reading(read)

    def days_with_calls(
        self, since: datetime, until: datetime, *, months: bool = False
    ) -> list[tuple[datetime, datetime]]:
        """The runs of the ledger's days (months) in which calls started, from ``since`` to
        ``until``: one lookup for each day that holds calls, however long the window."""
        return self.reading(
            lambda conn: _aggregate.held_stretches(conn, since, until, months=months)
        )

    def failures(self, where: _spans.SpanFilter) -> list[_aggregate.FailureCount]:
        """Calls that did not end ``ok``, counted per (status, error type)."""
        return self.reading(lambda conn: _aggregate.aggregate_failures(conn, where))

    def spend_and_busy(
        self, where: _spans.SpanFilter, by: Sequence[str], since: datetime, until: datetime
    ) -> tuple[list[_aggregate.SpendSums], int, int]:
        """:meth:`spend`, and the busy ns summed over upstream hosts and the number of hosts in
        [since, until), read as one snapshot: chargeback splits the one by the other, and a
        call recorded between two reads was in the busy time and in nobody's usage."""

        def read(conn: Connection) -> tuple[list[_aggregate.SpendSums], int, int]:
            sums = _aggregate.aggregate_spend(conn, where, by, ())
            busy, hosts = _timings.busy_union(conn, since, until)
            return sums, busy, hosts

        return self.reading(read)
