"""What the CLI bills, held to an oracle that prices and cuts the raw spans itself.

Spans near a month's edges in the report's zone and the ledger's (which may differ), at DST
changes (23- and 25-hour days, Lord Howe's half hour) and in zones whose midnights are not
on the hour (Kolkata, Kathmandu, Eucla, Chatham); several currencies in one month (yen with
no decimals, dinars with three); rules whose ``--from`` changes the price mid-month, read at
the ledger's midnights; unpriced and estimated calls; costs recorded wrong and put right by
``ometer reprice``. The oracle (``_oracle.py``) prices each span with Decimal and cuts days
with zoneinfo; ``report``, ``chargeback`` and ``/api/dash`` must say exactly what it says.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.records import NO_HOST, PriceRule, SpanRecord
from ollama_meter.reports import DashQuery, dashboard_report
from tests.factories import make_span
from tests.reports import _oracle as oracle

ZONES = [
    "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla", "Pacific/Chatham",
    "America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC",
]  # fmt: skip
MONTHS = ["2026-03", "2026-04", "2026-10", "2026-11"]  # each has a DST change somewhere
MODELS = ["llama3.1:8b", "llama3.1:70b", "qwen2.5:7b", "phi3:mini"]
PATTERNS = ["*", "llama3.1:*", "llama3.1:8b", "qwen2.5:*"]
CURRENCIES = ["USD", "JPY", "BHD", "KWD"]
HOSTS = ["http://gpu1:11434", "http://gpu2:11434", NO_HOST]
OFFSETS_US = [0, -1, 1, -1_800_000_000, 1_800_000_000, -3_600_000_000, 2_700_000_000]
EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "6"))
"""Examples per test; ``ORACLE_EXAMPLES=80`` hunts longer (each one is a whole ledger)."""
SETTINGS = settings(
    max_examples=EXAMPLES,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking whole ledgers took minutes
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_price = st.builds(
    lambda n, places: Decimal(n).scaleb(-places), st.integers(0, 10**3), st.integers(0, 7)
)


@st.composite
def rules(draw: st.DrawFn, month: str) -> list[PriceRule]:
    year, number = (int(x) for x in month.split("-"))
    days = [None, date(year, number, 15), date(year, number, 16), date(year, number, 1)]
    out = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.sampled_from(days))
        end = draw(st.sampled_from([d for d in days if d is None or start is None or d > start]))
        fields: dict[str, Any] = {
            name: draw(st.none() | _price)
            for name in ("input_per_1m", "output_per_1m", "gpu_hour", "per_request", "fee_per_1m")
        }
        if draw(st.booleans()):
            fields.update(watts=draw(_price), kwh_price=draw(_price))
        if all(v is None for v in fields.values()):
            fields["input_per_1m"] = Decimal("0.15")
        out.append(
            PriceRule(
                pattern=draw(st.sampled_from(PATTERNS)), currency=draw(st.sampled_from(CURRENCIES)),
                charge_load=draw(st.booleans()), effective_from=start, effective_until=end,
                **fields,
            )
        )  # fmt: skip
    return out


@st.composite
def spans(draw: st.DrawFn, anchors: list[datetime]) -> list[SpanRecord]:
    out = []
    for _ in range(draw(st.integers(1, 18))):
        offset = draw(
            st.sampled_from(OFFSETS_US) | st.integers(-3 * 86_400 * 10**6, 86_400 * 10**6)
        )
        started = draw(st.sampled_from(anchors)) + timedelta(microseconds=offset)
        status = draw(st.sampled_from(["ok", "ok", "error", "client_abort", "rejected"]))
        ns = st.none() | st.integers(0, 4 * 10**12)
        prompt, evaluation = draw(ns), draw(ns)
        latency = draw(st.integers(0, 2 * 10**13))
        out.append(
            make_span(
                started_at=started,
                ended_at=draw(st.none() | st.just(started + timedelta(microseconds=latency // 1000))),
                tenant=draw(st.sampled_from(["acme", "globex"])),
                department=draw(st.sampled_from(["sales", "ops", "legal"])),
                request_model=draw(st.sampled_from(MODELS)),
                response_model=draw(st.none() | st.sampled_from(MODELS)),
                status=status,
                error_type=None if status in ("ok",) else "boom",
                input_tokens=draw(st.integers(0, 10**6)),
                output_tokens=draw(st.integers(0, 10**6)),
                token_source=draw(st.sampled_from(["reported", "estimated"])),
                prompt_eval_duration_ns=prompt,
                eval_duration_ns=evaluation,
                load_duration_ns=draw(ns),
                latency_ns=latency,
                upstream_host=draw(st.sampled_from(HOSTS)),
                # recorded wrong: reprice must put every figure and rollup right
                cost_total=draw(st.integers(0, 10**9)), cost_tokens=7, currency="USD",
                unpriced=draw(st.booleans()), price_rule_id=None,
            )
        )  # fmt: skip
    return out


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    month = draw(st.sampled_from(MONTHS))
    zone, ledger_zone = (
        ZoneInfo(draw(st.sampled_from(ZONES))),
        ZoneInfo(draw(st.sampled_from(ZONES))),
    )
    anchors = [*oracle.month_bounds(month, zone), *oracle.month_bounds(month, ledger_zone)]
    anchors += oracle.transitions(zone, month) + oracle.transitions(ledger_zone, month)
    middle = datetime.fromisoformat(month + "-15").replace(tzinfo=ledger_zone).astimezone(UTC)
    anchors.append(middle)
    mid = [datetime.fromisoformat(f"{month}-{d}").date() for d in ("01", "14", "15", "16")]
    return {
        "month": month, "zone": zone, "ledger_zone": ledger_zone,
        "spans": draw(spans(anchors)), "rules": draw(rules(month)),
        "currency": draw(st.sampled_from(["USD", "JPY"])),
        "since": draw(st.none() | st.sampled_from(mid)),
        "until": draw(st.none() | st.sampled_from(mid)),
    }  # fmt: skip


def _micros(text: str) -> int:
    return int(Decimal(text).scaleb(6))


def _csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _csv(path: Path) -> list[dict[str, str]]:
    return _csv_text(path.read_text(encoding="utf-8"))


@SETTINGS
@given(case=cases())
def test_report_chargeback_and_dash_bill_what_the_oracle_prices(
    new_url: Callable[[], str],
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    case: dict[str, Any],
) -> None:
    month, zone, ledger_zone = case["month"], case["zone"], case["ledger_zone"]
    folder = tmp_path_factory.mktemp("oracle")
    url = new_url()
    ledger = Ledger(url, zone=ledger_zone.key)
    ledger.record(case["spans"])
    rules = [rule for rule, _ in ledger.add_price_rules(case["rules"])]
    ledger.dispose()
    monkeypatch.setenv("OMETER_DB_URL", url)
    monkeypatch.setenv("OMETER_TIMEZONE", zone.key)
    monkeypatch.setenv("OMETER_CURRENCY", case["currency"])
    first = min(s.started_at for s in case["spans"]).astimezone(ledger_zone).date()
    since, until = case["since"] or first - timedelta(days=1), case["until"]
    if until is not None and until < since:
        since, until = until, since
    dates = ["--since", since.isoformat()] + (["--until", until.isoformat()] if until else [])
    done = cli("reprice", *dates)
    assert done.code == 0, done.stderr

    # --since and --until are dates of the ledger's zone, as the rules' are; spans outside
    # keep what they were recorded with
    def repriced(s: SpanRecord) -> bool:
        day = oracle.local_day(s.started_at, ledger_zone)
        return since <= day and (until is None or day <= until)

    again = oracle.repriced(case["spans"], rules, ledger_zone, case["currency"])
    priced = [new if repriced(old) else old for old, new in zip(case["spans"], again, strict=True)]
    # what it says moved: per currency, before and after, of the spans it examined
    examined = [(o, n) for o, n in zip(case["spans"], again, strict=True) if repriced(o)]
    assert f"examined {len(examined)} span(s)" in done.stdout
    moved: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o, n in examined:
        moved[o.currency][0] += o.cost_total
        moved[n.currency][1] += n.cost_total
    said = re.findall(r"^  ([A-Z]{3}): ([0-9.]+) → ([0-9.]+) \(", done.stdout, re.MULTILINE)
    assert {c: [_micros(a), _micros(b)] for c, a, b in said} == dict(moved)
    inside = [s for s in priced if oracle.month_of(s.started_at, zone) == month]

    # ometer report --by department,day: each local day of the report's zone, each currency
    want: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    for s in inside:
        row = want[(s.department, f"{oracle.local_day(s.started_at, zone)}", s.currency)]
        row["requests"] += 1
        row["errors"] += s.status in ("error", "interrupted")
        row["input_tokens"] += s.input_tokens
        row["output_tokens"] += s.output_tokens
        row["gpu_ns"] += (s.prompt_eval_duration_ns or 0) + (s.eval_duration_ns or 0)
        row["cost"] += s.cost_total
    done = cli(
        "report", "--period", month, "--by", "department,day", "--format", "csv",
        "--out", str(folder / "report.csv"),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    got = {
        (r["department"], r["day"], r["currency"]): Counter(
            requests=int(r["requests"]),
            errors=int(r["errors"]),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            gpu_ns=int(Decimal(r["gpu_seconds"]).scaleb(9)),
            cost=_micros(r["cost"]),
        )
        for r in _csv(folder / "report.csv")
    }
    assert {k: +v for k, v in got.items()} == {k: +v for k, v in want.items()}
    assert set(got) == set(want)

    # ometer report --since --until --by tenant,week: local days, inclusive; ISO weeks
    year, number = (int(x) for x in month.split("-"))
    lo, hi = date(year, number, 1) - timedelta(days=9), date(year, number, 28) + timedelta(days=4)
    weeks: Counter[tuple[str, str, str]] = Counter()
    for s in priced:
        day = oracle.local_day(s.started_at, zone)
        if lo <= day <= hi:
            iso = day.isocalendar()
            weeks[(s.tenant, f"{iso.year}-W{iso.week:02d}", s.currency)] += s.cost_total
    done = cli(
        "report", "--since", lo.isoformat(), "--until", hi.isoformat(), "--by", "tenant,week",
        "--format", "csv",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert {
        (r["tenant"], r["week"], r["currency"]): _micros(r["cost"]) for r in _csv_text(done.stdout)
    } == dict(weeks)

    # ometer chargeback, usage only: per tenant, department and currency
    bill: Counter[tuple[str, str, str]] = Counter()
    calls: Counter[tuple[str, str, str]] = Counter()
    for s in inside:
        bill[(s.tenant, s.department, s.currency)] += s.cost_total
        calls[(s.tenant, s.department, s.currency)] += 1
    done = cli("chargeback", "--month", month, "--out", str(folder / "cb.csv"))
    assert done.code == 0, done.stderr
    rows = _csv(folder / "cb.csv")
    assert {
        (r["tenant"], r["department"], r["currency"]): _micros(r["usage_cost"]) for r in rows
    } == dict(bill)
    assert {
        (r["tenant"], r["department"], r["currency"]): int(r["requests"]) for r in rows
    } == dict(calls)
    assert all(
        r["total_cost"] == r["usage_cost"] and Decimal(r["fixed_cost_share"]) == 0 for r in rows
    )
    unpriced = [
        s for s in inside if s.unpriced and (s.status == "ok" or s.input_tokens + s.output_tokens)
    ]
    assert ("matched no price rule" in done.stderr) == bool(unpriced)

    # /api/dash for that month: per currency, and per department and local day
    _, end = oracle.month_bounds(month, zone)
    reader = Ledger(url)
    dash = dashboard_report(
        reader, DashQuery(period="month"), tz=zone, now=end - timedelta(microseconds=1),
        budget_tz=ledger_zone,
    ).to_json()  # fmt: skip
    reader.dispose()
    per_currency: Counter[str] = Counter()
    for s in inside:
        per_currency[s.currency] += s.cost_total
    assert dash["period"]["label"] == month
    assert {d["currency"]: _micros(d["cost"]) for d in dash["spend"]} == {
        c: v for c, v in per_currency.items() if c in dash["currencies"]
    }
    assert set(dash["currencies"]) == {s.currency for s in inside}
    cells: Counter[tuple[str, str, str, str]] = Counter()
    for s in inside:
        cells[(s.tenant, s.department, f"{oracle.local_day(s.started_at, zone)}", s.currency)] += (
            s.cost_total
        )
    assert {
        (r["tenant"], r["department"], r["day"], r["currency"]): _micros(r["cost"])
        for r in dash["spend_by_department_by_day"]
    } == dict(cells)
    models: Counter[tuple[str, str]] = Counter()
    for s in inside:  # the model Ollama answered with, else the one asked for
        models[(s.response_model or s.request_model, s.currency)] += s.cost_total
    assert {(r["model"], r["currency"]): _micros(r["cost"]) for r in dash["models"]} == dict(models)


@pytest.mark.parametrize(
    ("fields", "prices", "micros"),
    [
        ({"input_tokens": 1}, {"input_per_1m": Decimal("0.5")}, 0),  # 0.5: to even, 0
        ({"input_tokens": 3}, {"input_per_1m": Decimal("0.5")}, 2),  # 1.5: to even, 2
        ({"input_tokens": 5, "output_tokens": 1}, {"input_per_1m": Decimal("0.5")}, 2),  # 2.5
        ({"eval_duration_ns": 1_800_000}, {"gpu_hour": Decimal(1)}, 0),  # 0.5
        ({"eval_duration_ns": 5_400_000}, {"gpu_hour": Decimal(1)}, 2),  # 1.5
        (
            {"eval_duration_ns": 400 * 10**9},
            {"watts": Decimal(1), "kwh_price": Decimal("0.0495")},
            6,
        ),
        ({"load_duration_ns": 1_800_000}, {"gpu_hour": Decimal(3), "charge_load": True}, 2),
        ({"status": "client_abort", "input_tokens": 1}, {"per_request": Decimal("0.0000005")}, 0),
        (
            {"status": "client_abort", "eval_duration_ns": 1},
            {"per_request": Decimal("0.0000015")},
            2,
        ),
        ({"status": "client_abort"}, {"per_request": Decimal(1)}, 0),  # Ollama served nothing
        ({"status": "error"}, {"per_request": Decimal(1)}, 0),  # a fee only for calls answered
    ],
)
def test_a_half_micro_unit_rounds_to_even_once_per_part(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any], prices: dict[str, Any], micros: int,
) -> None:  # fmt: skip
    """Ties of each part, priced by ``reprice`` as the oracle prices them, and as by hand."""
    span = make_span(
        **{"input_tokens": 0, "output_tokens": 0, "prompt_eval_duration_ns": 0,
           "eval_duration_ns": 0, **fields},
        started_at=datetime(2026, 11, 5, tzinfo=UTC),
    )  # fmt: skip
    ledger = Ledger(sqlite_url, zone="UTC")
    ledger.record([span])
    rules = [ledger.add_price_rule(PriceRule(pattern="*", currency="USD", **prices))]
    ledger.dispose()
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    assert cli("reprice", "--since", "2026-11-01").code == 0
    assert oracle.price(span, rules, ZoneInfo("UTC"), "USD").total == micros
    done = cli("report", "--period", "2026-11", "--by", "department", "--format", "csv")
    (row,) = _csv_text(done.stdout)
    assert _micros(row["cost"]) == micros
