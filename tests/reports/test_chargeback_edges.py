"""A bill's month at its very edges: calls that start on, just before and just after the
month's first and last instant in the bill's zone, busy across them, in months with a DST
change, in zones whose midnights are not on the hour, on ledgers whose days begin elsewhere."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger
from ollama_meter.periods import Window, parse_period
from ollama_meter.records import NO_HOST, SpanRecord
from ollama_meter.reports import allocate, chargeback
from tests.factories import make_span, opened

NOW = datetime(2027, 1, 2, tzinfo=UTC)
US = timedelta(microseconds=1)
_ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
_CALLS = st.lists(
    st.tuples(
        st.sampled_from([("acme", "sales"), ("acme", "ops"), ("globex", "sales")]),
        st.booleans(),  # at the month's start, or at its end
        st.sampled_from([-3_600_000_000, -1, 0, 1, 59_999_999, 900_000_000]),  # µs from it
        st.sampled_from([0, 1, 999_999, 1_800_000_000]),  # busy µs
        st.sampled_from(["USD", "USD", "EUR"]),
        st.sampled_from(["http://gpu1:11434", "http://gpu2:11434", NO_HOST]),
    ),
    min_size=1,
    max_size=14,
)


def _edge_spans(
    calls: list[tuple[tuple[str, str], bool, int, int, str, str]], window: Window
) -> list[SpanRecord]:
    """The drawn calls, each at the window's start or end and busy as long as it ran."""
    spans = []
    for (tenant, department), at_end, offset, busy, currency, host in calls:
        start = (window.end if at_end else window.start) + offset * US
        spans.append(
            make_span(
                tenant=tenant, department=department, started_at=start,
                ended_at=start + busy * US, prompt_eval_duration_ns=0,
                eval_duration_ns=busy * 1000, cost_total=busy + 1, cost_tokens=busy + 1,
                currency=currency, upstream_host=host, unpriced=False,
            )
        )  # fmt: skip
    return spans


def _union(intervals: list[tuple[datetime, datetime]]) -> timedelta:
    total, end = timedelta(0), None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    calls=_CALLS,
    zone=st.sampled_from(_ZONES),
    ledger_zone=st.sampled_from(["UTC", *_ZONES]),
    month=st.sampled_from(["2026-03", "2026-04", "2026-10", "2026-11"]),
    cents=st.integers(0, 10**9),
    idle=st.sampled_from(["share", "separate"]),
)
def test_a_months_edges_bill_each_call_once_and_the_fixed_cost_to_the_cent(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[tuple[str, str], bool, int, int, str, str]],
    zone: str,
    ledger_zone: str,
    month: str,
    cents: int,
    idle: str,
) -> None:
    tz = ZoneInfo(zone)
    window = parse_period(month, tz=tz, now=NOW)
    spans = _edge_spans(calls, window)
    path: Path = tmp_path_factory.mktemp("edges") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", zone=ledger_zone)
    ledger.record(spans)
    fixed = Decimal(cents).scaleb(-2)
    bill = chargeback(ledger, month, tz=tz, now=NOW, currency="USD", fixed_cost=fixed, idle=idle)
    ledger.dispose()

    inside = [s for s in spans if window.start <= s.started_at < window.end]
    usage: Counter[tuple[str, str, str]] = Counter()
    requests: Counter[tuple[str, str, str]] = Counter()
    for s in inside:
        usage[(s.tenant, s.department, s.currency)] += s.cost_total
        requests[(s.tenant, s.department, s.currency)] += 1
    billed = {(r.tenant, r.department, r.currency): r for r in bill.rows}
    for key, cost in usage.items():
        assert billed[key].usage_cost == cost
        assert billed[key].requests == requests[key]
    assert sum(r.requests for r in bill.rows) == len(inside)
    assert sum((r.fixed_cost_share for r in bill.rows), Decimal(0)) == fixed
    for row in bill.rows:
        assert row.total_cost == row.usage_cost + int(row.fixed_cost_share.scaleb(6))

    per_host: defaultdict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for s in spans:
        if s.upstream_host == NO_HOST:
            continue
        assert s.ended_at is not None
        a, b = max(s.started_at, window.start), min(s.ended_at, window.end)
        if b > a:
            per_host[s.upstream_host].append((a, b))
    busy = sum((_union(v) for v in per_host.values()), timedelta(0))
    assert bill.busy_ns == busy // US * 1000

    weights: Counter[tuple[str, str]] = Counter()
    for s in inside:
        weights[(s.tenant, s.department)] += s.eval_duration_ns or 0
    if idle == "share" and any(weights.values()):
        want = allocate(cents, {k: w for k, w in weights.items() if w})
        got = {
            (r.tenant, r.department): int(r.fixed_cost_share.scaleb(2))
            for r in bill.rows
            if r.currency == "USD"
        }
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    calls=st.lists(_CALLS.map(lambda calls: calls[0]), max_size=4),
    month=st.sampled_from(["2026-10", "2026-11"]),
    zero=st.sampled_from(["0", "0.00", "0.000"]),
    idle=st.sampled_from(["share", "separate"]),
)
def test_a_fixed_cost_of_nothing_is_the_bill_without_one(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[tuple[str, str], bool, int, int, str, str]],
    month: str,
    zero: str,
    idle: str,
) -> None:
    """``--fixed-cost 0`` of a month in which no GPU was busy (no calls, or calls with no
    busy time) billed an ``__idle__`` row of zeros that the bill without it has not."""
    tz = ZoneInfo("Europe/Berlin")
    start = parse_period("2026-11", tz=tz, now=NOW).start
    with opened(f"sqlite:///{tmp_path_factory.mktemp('zero') / 'ledger.db'}") as ledger:
        ledger.record(
            [
                make_span(
                    tenant=tenant,
                    department=department,
                    started_at=start + offset * US,
                    ended_at=start + (offset + busy) * US,
                    eval_duration_ns=busy * 1000,
                    cost_total=busy,
                    cost_tokens=busy,
                    currency=currency,
                    upstream_host=host,
                )
                for (tenant, department), _, offset, busy, currency, host in calls
            ]
        )
        options = {"tz": tz, "now": NOW, "currency": "USD", "idle": idle}
        plain = chargeback(ledger, month, **options)  # type: ignore[arg-type]
        nothing = chargeback(ledger, month, fixed_cost=Decimal(zero), **options)  # type: ignore[arg-type]
        assert nothing.rows == plain.rows
        assert all(row.tenant != "__idle__" for row in nothing.rows)


def test_a_month_with_spaces_around_it_is_that_month_as_every_date_option_takes_it(
    sqlite_url: str,
) -> None:
    """``--month '2026-11 '`` (a pasted value) is 2026-11, as ``--period`` and ``--since``
    take theirs: spaces around, never inside, and the bill names the month without them."""
    tz = ZoneInfo("Europe/Berlin")
    ledger = Ledger(sqlite_url)
    ledger.record([make_span(started_at=datetime(2026, 11, 10, tzinfo=UTC), cost_total=7)])
    options = {"tz": tz, "now": NOW, "currency": "USD"}
    plain = chargeback(ledger, "2026-11", **options)  # type: ignore[arg-type]
    for spaced in ("2026-11 ", " 2026-11", "\t2026-11\n"):
        bill = chargeback(ledger, spaced, **options)  # type: ignore[arg-type]
        assert (bill.month, bill.rows) == ("2026-11", plain.rows)
        assert [row.month for row in bill.rows] == ["2026-11"]
    with pytest.raises(ValidationError, match="is not a month"):
        chargeback(ledger, "2026 -11", **options)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    calls=_CALLS,
    cents=st.integers(1, 400),
    idle=st.sampled_from(["share", "separate"]),
)
def test_a_fixed_cost_adds_a_row_only_to_bill_a_share_on_it(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[tuple[str, str], bool, int, int, str, str]],
    cents: int,
    idle: str,
) -> None:
    """A department whose calls all cost EUR got a USD row for its fixed share, and one of
    zeros (no calls, no money) when the share came to less than a cent: an invoice line of
    0.00 for each such department in the import."""
    tz = ZoneInfo("Europe/Berlin")
    window = parse_period("2026-11", tz=tz, now=NOW)
    with opened(f"sqlite:///{tmp_path_factory.mktemp('rows') / 'ledger.db'}") as ledger:
        ledger.record(_edge_spans(calls, window))
        options = {"tz": tz, "now": NOW, "currency": "USD", "idle": idle}
        plain = chargeback(ledger, "2026-11", **options)  # type: ignore[arg-type]
        fixed = chargeback(ledger, "2026-11", fixed_cost=Decimal(cents).scaleb(-2), **options)  # type: ignore[arg-type]
    before = {(r.tenant, r.department, r.currency) for r in plain.rows}
    for row in fixed.rows:
        assert (row.tenant, row.department, row.currency) in before or row.fixed_cost_share
    assert sum(r.fixed_cost_share for r in fixed.rows) == Decimal(cents).scaleb(-2)
