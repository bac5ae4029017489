"""With ``--idle separate``, no department pays for GPU time its calls did not use.

A call busy across the month's first midnight (a batch started the evening before) is busy
time of the new month, but its GPU seconds are the old month's, where its usage is. The new
month's departments were billed that busy time in proportion to their own seconds: one
call of a second paid 80.00 of a 7,200.00 fixed cost for a batch's 8 hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.reports import chargeback
from tests.factories import make_span, opened

NOW = datetime(2027, 1, 2, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
SEC = 10**9
US = timedelta(microseconds=1)


def _call(department: str, start: datetime, busy_us: int, host: str = "http://gpu1:11434"):  # type: ignore[no-untyped-def]
    return make_span(
        department=department, started_at=start, ended_at=start + busy_us * US,
        prompt_eval_duration_ns=0, eval_duration_ns=busy_us * 1000,
        cost_total=1, cost_tokens=1, upstream_host=host, unpriced=False,
    )  # fmt: skip


def test_a_batch_busy_past_the_months_first_midnight_is_not_billed_to_the_next_months_users(
    db_url: str,
) -> None:
    batch = datetime(2026, 10, 31, 12, tzinfo=UTC)  # 20 h: 12 in October, 8 in November
    with opened(db_url, zone="UTC") as ledger:
        ledger.record(
            [
                _call("batch", batch, 20 * 3600 * 10**6),
                _call("tiny", datetime(2026, 11, 10, tzinfo=UTC), 10**6),  # one second
            ]
        )
        options = {"tz": UTC_ZONE, "now": NOW, "currency": "USD", "idle": "separate"}
        november = chargeback(ledger, "2026-11", fixed_cost=Decimal(7200), **options)  # type: ignore[arg-type]
    shares = {r.department: r.fixed_cost_share for r in november.rows}
    # a second of a 30-day month's 7,200.00 is 0.0028: nothing, not the batch's 8 hours
    assert shares == {"tiny": Decimal("0.00"), "__idle__": Decimal("7200.00")}
    assert november.busy_ns == (8 * 3600 + 1) * SEC  # the month's busy time is as it was


_DEPARTMENTS = ["sales", "ops", "legal"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    before=st.lists(  # calls started up to a day before the month, busy into it
        st.tuples(st.integers(1, 86_400 * 10**6), st.integers(0, 86_400 * 10**6)), max_size=4
    ),
    inside=st.lists(
        st.tuples(
            st.sampled_from(_DEPARTMENTS),
            st.integers(0, 3 * 86_400 * 10**6),  # µs after the month's start
            st.integers(0, 7_200 * 10**6),  # busy µs
            st.sampled_from(["http://gpu1:11434", "http://gpu2:11434"]),
        ),
        min_size=1,
        max_size=8,
    ),
    cents=st.integers(1, 10**12),
    gpus=st.integers(1, 3),
)
def test_no_department_pays_for_more_capacity_than_its_own_gpu_seconds(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[int, int]],
    inside: list[tuple[str, int, int, str]],
    cents: int,
    gpus: int,
) -> None:
    window = parse_period("2026-11", tz=UTC_ZONE, now=NOW)
    spans = [_call("batch", window.start - ago * US, busy) for ago, busy in before]
    spans += [_call(d, window.start + at * US, busy, host) for d, at, busy, host in inside]
    path: Path = tmp_path_factory.mktemp("spill") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", zone="UTC")
    ledger.record(spans)
    bill = chargeback(
        ledger, "2026-11", tz=UTC_ZONE, now=NOW, currency="USD",
        fixed_cost=Decimal(cents).scaleb(-2), idle="separate", gpus=gpus,
    )  # fmt: skip
    ledger.dispose()
    own = {d: sum(busy * 1000 for dd, _, busy, _ in inside if dd == d) for d in _DEPARTMENTS}
    assert sum(int(r.fixed_cost_share.scaleb(2)) for r in bill.rows) == cents
    for row in bill.rows:
        if row.department == "__idle__":
            continue
        share = int(row.fixed_cost_share.scaleb(2))
        # at most its exact quota of the month's capacity, rounded up to a whole cent
        assert share * bill.capacity_ns <= cents * own[row.department] + bill.capacity_ns - 1
