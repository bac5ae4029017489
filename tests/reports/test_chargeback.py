"""Chargeback from known spans: rows tie out to the cent, idle shared or separate, same bytes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.pricing import from_micros
from ollama_meter.records import NO_HOST
from ollama_meter.reports import CHARGEBACK_COLUMNS, chargeback, to_csv
from tests.factories import make_span, opened

NOW = datetime(2026, 12, 2, tzinfo=UTC)
SEC = 1_000_000_000
HEADER = "month,tenant,department,requests,input_tokens,output_tokens,gpu_seconds,usage_cost,fixed_cost_share,total_cost,currency"


def span(
    dept: str,
    start: datetime,
    busy_s: int,
    cost: int,
    host: str = "http://gpu1:11434",
    tenant: str = "acme",
    **kw: object,
):  # type: ignore[no-untyped-def]
    kw.setdefault("unpriced", False)  # a cost is given: a price rule matched
    return make_span(
        tenant=tenant,
        department=dept,
        started_at=start,
        ended_at=start + timedelta(seconds=busy_s),
        prompt_eval_duration_ns=0,
        eval_duration_ns=busy_s * SEC,
        cost_total=cost,
        cost_tokens=cost,
        upstream_host=host,
        **kw,
    )


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    ledger = Ledger(db_url)
    t = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [
            span("sales", t, 100, 1_000_000),  # 100 s
            span("sales", t + timedelta(seconds=50), 100, 2_500_000),  # overlaps the first by 50 s
            span("support", t + timedelta(hours=1), 200, 500_000),  # 200 s
            span(
                "research", t, 300, 0, host="http://gpu2:11434", tenant="globex"
            ),  # other host, same time
            span(
                "support", datetime(2026, 10, 31, 23, 30, tzinfo=UTC), 10, 7
            ),  # October in UTC, November in Berlin
            span("sales", t, 0, 0, status="error", input_tokens=0, output_tokens=0),
        ]
    )
    return ledger


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_usage_only(ledger: Ledger) -> None:
    result = chargeback(
        ledger, "2026-11", tz=__import__("zoneinfo").ZoneInfo("UTC"), now=NOW, currency="USD"
    )
    text = to_csv(CHARGEBACK_COLUMNS, result.rows)
    assert text.splitlines()[0] == HEADER
    assert [
        (
            r["tenant"],
            r["department"],
            r["requests"],
            r["gpu_seconds"],
            r["usage_cost"],
            r["fixed_cost_share"],
            r["total_cost"],
        )
        for r in rows_of(text)
    ] == [
        ("acme", "sales", "3", "200.000000000", "3.500000", "0.00", "3.500000"),
        ("acme", "support", "1", "200.000000000", "0.500000", "0.00", "0.500000"),
        ("globex", "research", "1", "300.000000000", "0.000000", "0.00", "0.000000"),
    ]
    assert result.warnings == []


def test_fixed_cost_with_idle_shared(ledger: Ledger) -> None:
    from zoneinfo import ZoneInfo

    result = chargeback(
        ledger,
        "2026-11",
        tz=ZoneInfo("UTC"),
        now=NOW,
        currency="USD",
        fixed_cost=Decimal("2400.00"),
    )
    rows = rows_of(to_csv(CHARGEBACK_COLUMNS, result.rows))
    # shared by busy seconds 200 : 200 : 300 of 700
    assert [r["fixed_cost_share"] for r in rows] == ["685.72", "685.71", "1028.57"]
    assert sum(Decimal(r["fixed_cost_share"]) for r in rows) == Decimal("2400.00")
    assert sum(Decimal(r["total_cost"]) for r in rows) == Decimal("2400.00") + Decimal("4.000000")
    # capacity: 30 days x 2 hosts; busy: the union per host (150 + 200 on gpu1, 300 on gpu2)
    assert result.capacity_ns == 30 * 86400 * SEC * 2
    assert result.busy_ns == 650 * SEC


def test_fixed_cost_with_idle_separate(ledger: Ledger) -> None:
    from zoneinfo import ZoneInfo

    result = chargeback(
        ledger,
        "2026-11",
        tz=ZoneInfo("UTC"),
        now=NOW,
        currency="USD",
        fixed_cost=Decimal("2400.00"),
        idle="separate",
        gpus=1,
    )
    rows = rows_of(to_csv(CHARGEBACK_COLUMNS, result.rows))
    assert [(r["tenant"], r["department"]) for r in rows][-1] == ("__idle__", "__idle__")
    capacity, busy = 30 * 86400 * 2, 650
    exact_busy_share = Decimal(2400) * busy / capacity  # what departments carry together
    departments = [Decimal(r["fixed_cost_share"]) for r in rows[:-1]]
    assert abs(sum(departments) - exact_busy_share) <= Decimal("0.02")
    assert sum(Decimal(r["fixed_cost_share"]) for r in rows) == Decimal("2400.00")
    assert Decimal(rows[-1]["total_cost"]) == Decimal(rows[-1]["fixed_cost_share"])
    gpus2 = chargeback(
        ledger,
        "2026-11",
        tz=ZoneInfo("UTC"),
        now=NOW,
        currency="USD",
        fixed_cost=Decimal("2400.00"),
        idle="separate",
        gpus=2,
    )
    assert gpus2.capacity_ns == 2 * result.capacity_ns


def test_months_are_cut_in_the_configured_zone(ledger: Ledger) -> None:
    from zoneinfo import ZoneInfo

    berlin = chargeback(ledger, "2026-11", tz=ZoneInfo("Europe/Berlin"), now=NOW, currency="USD")
    support = next(r for r in berlin.rows if r["department"] == "support")
    assert (support["requests"], support["usage_cost"]) == (2, 500_007)


def test_same_ledger_same_bytes_and_no_data_is_a_header(ledger: Ledger, tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    def render(led: Ledger, month: str) -> str:
        r = chargeback(
            led,
            month,
            tz=ZoneInfo("UTC"),
            now=NOW,
            currency="USD",
            fixed_cost=Decimal(1000),
            idle="separate",
        )
        return to_csv(CHARGEBACK_COLUMNS, r.rows)

    assert render(ledger, "2026-11") == render(ledger, "2026-11")
    empty = Ledger(f"sqlite:///{tmp_path / 'empty.db'}")
    # nobody was busy: the whole fixed cost is idle capacity
    assert (
        render(empty, "2026-11")
        == HEADER
        + "\n2026-11,__idle__,__idle__,0,0,0,0.000000000,0.000000,1000.00,1000.000000,USD\n"
    )
    usage_only = chargeback(empty, "2026-09", tz=ZoneInfo("UTC"), now=NOW, currency="USD")
    assert to_csv(CHARGEBACK_COLUMNS, usage_only.rows) == HEADER + "\n"


def test_formula_cells_are_neutralised(sqlite_url: str) -> None:
    from zoneinfo import ZoneInfo

    ledger = Ledger(sqlite_url)
    ledger.record([span("=HYPERLINK(1)", datetime(2026, 11, 3, tzinfo=UTC), 1, 1, tenant="+cmd")])
    text = to_csv(
        CHARGEBACK_COLUMNS,
        chargeback(ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency="USD").rows,
    )
    row = rows_of(text)[0]
    assert row["tenant"] == "'+cmd" and row["department"] == "'=HYPERLINK(1)"


def test_month_not_over_warns_and_bad_input_is_refused(ledger: Ledger) -> None:
    from zoneinfo import ZoneInfo

    from ollama_meter.errors import ValidationError

    early = chargeback(
        ledger,
        "2026-11",
        tz=ZoneInfo("UTC"),
        now=datetime(2026, 11, 20, tzinfo=UTC),
        currency="USD",
    )
    assert early.warnings == ["2026-11 is not over yet; these figures will still change"]
    for kwargs, message in [
        ({"fixed_cost": Decimal("10.001")}, "finer than a cent"),
        ({"fixed_cost": Decimal("-1")}, "must not be negative"),
        ({"idle": "ignore"}, "not one of"),
        ({"gpus": 0}, "give 1 to 1,024"),
        ({"gpus": 80_000}, "--gpus 80000 is not a number of GPUs in one host"),
        ({"month": "2027-11"}, r"--month 2027-11 has not begun \(2026-12-02 in UTC\)"),
    ]:
        args = {"month": "2026-11", **kwargs}
        with pytest.raises(ValidationError, match=message):
            chargeback(ledger, tz=ZoneInfo("UTC"), now=NOW, currency="USD", **args)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="YYYY-MM"):
        chargeback(ledger, "2026-11-01", tz=ZoneInfo("UTC"), now=NOW, currency="USD")


@given(
    st.text(st.sampled_from("0123456789-W T:x٢２"), max_size=10)
    | st.sampled_from(["2026-1x", "2026-W4", "12-2026", "2026-11-1", "today", "month", "2026-13"])
)
@example(" 2026-11 ")
@example("2026-11\n")
@example("1969-12")  # a month of the calendar, before the dates ometer works with
def test_a_month_is_yyyy_mm_or_a_one_line_error_that_says_so(text: str) -> None:
    """--month took only YYYY-MM, but '2026-1x' was told to use "today, week, month,
    YYYY-MM or YYYY-MM-DD", and ' 2026-11 ' (the spaces a pasted value brings, which
    --period takes) was refused as no month."""
    import re
    from datetime import date
    from zoneinfo import ZoneInfo

    from ollama_meter.errors import ValidationError
    from ollama_meter.reports._chargeback import parse_month

    month = text.strip()
    try:  # YYYY-MM in ASCII digits, and a month of the calendar
        first = (
            date.fromisoformat(f"{month}-01") if re.fullmatch("[0-9]{4}-[0-9]{2}", month) else None
        )
    except ValueError:
        first = None
    try:
        window = parse_month(text, tz=ZoneInfo("UTC"), now=NOW)
    except ValidationError as exc:
        message = str(exc)
        assert message.startswith("--month ") and "\n" not in message.replace(repr(text), "")
        assert "today, week" not in message, message
        if first is not None:  # well written: it is the calendar's, ometer's range is narrower
            assert not date(1970, 1, 1) <= first <= date(9998, 12, 1), message
            assert message == (
                f"--month {first} is outside the dates ometer works with (1970-01-01 to 9998-12-31)"
            )
        else:
            assert "YYYY-MM" in message, message
        return
    assert first is not None and window.label == month
    assert window.start == datetime.fromisoformat(text.strip() + "-01").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "amount", ["NaN", "sNaN", "Infinity", "-Infinity", "1e13", "-0.01", "0.001", "0E-5000"]
)
def test_a_fixed_cost_that_is_no_amount_is_a_one_line_error(ledger: Ledger, amount: str) -> None:
    """chargeback() is the library's too: Decimal('NaN') raised InvalidOperation, 'Infinity'
    an OverflowError, and 1e13 (past the largest fixed cost the CLI takes) was billed."""
    from zoneinfo import ZoneInfo

    from ollama_meter.errors import ValidationError

    with pytest.raises(ValidationError) as raised:
        chargeback(
            ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency="USD",
            fixed_cost=Decimal(amount),
        )  # fmt: skip
    assert "fixed cost" in str(raised.value) and "\n" not in str(raised.value)


def test_cli_writes_atomically_and_reads_the_fixed_cost_from_the_environment(
    cli, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OMETER_DB_URL", ledger.url)
    monkeypatch.setenv("OMETER_FIXED_MONTHLY_COST", "700")
    out = tmp_path / "cb.csv"
    result = cli("chargeback", "--month", "2026-11", "--out", str(out))
    assert result.code == 0, result.stderr
    assert [r["fixed_cost_share"] for r in rows_of(out.read_text())] == [
        "200.00",
        "200.00",
        "300.00",
    ]
    assert not list(tmp_path.glob(".cb.csv*"))
    as_json = json.loads(
        cli(
            "chargeback",
            "--month",
            "2026-11",
            "--format",
            "json",
            "--fixed-cost",
            "7",
            "--idle",
            "separate",
        ).stdout
    )
    assert list(as_json[0]) == HEADER.split(",")
    assert as_json[-1]["department"] == "__idle__" and isinstance(as_json[0]["total_cost"], str)
    assert cli("chargeback", "--month", "nov").code == 2
    # '-' is stdout, as for every Unix tool (a file named '-' was written), in every format
    monkeypatch.chdir(tmp_path)
    for fmt in ("csv", "json", "html"):
        to_stdout = cli("chargeback", "--month", "2026-11", "-f", fmt, "--out", "-")
        assert to_stdout.code == 0 and "wrote" not in to_stdout.stderr
        if fmt == "html":  # a page of its own moment
            assert to_stdout.stdout.startswith("<!doctype html>")
        else:
            assert to_stdout.stdout == cli("chargeback", "--month", "2026-11", "-f", fmt).stdout
    assert not (tmp_path / "-").exists()
    assert "not a number" in cli("chargeback", "--month", "2026-11", "--fixed-cost", "lots").stderr


def test_runs_writing_one_file_at_once_leave_one_whole_file(tmp_path: Path) -> None:
    """Cron overlapping a manual run: each writes its own temp file and renames it whole."""
    import threading

    from ollama_meter.cli._common import write_output

    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "cb.csv"
    texts = [f"run {n}\n" + "x" * 200_000 + "\n" for n in range(4)]
    failures: list[BaseException] = []

    def run(text: str) -> None:
        for _ in range(20):
            try:
                write_output(text, path)
            except Exception as exc:  # any failure is the finding
                failures.append(exc)

    threads = [threading.Thread(target=run, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and path.read_text() in texts
    assert [p.name for p in path.parent.iterdir()] == ["cb.csv"]


_ZONES = ["UTC", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Apia", "America/St_Johns"]
_calls = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "support", "r-d"]),
        st.integers(0, 40 * 24 * 3600),  # seconds from 27 days before the month to after it
        st.integers(0, 7200),  # busy seconds
        st.sampled_from(["USD", "EUR"]),
        st.sampled_from(["http://gpu1:11434", "http://gpu2:11434", NO_HOST]),
    ),
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=_calls,
    zone=st.sampled_from(_ZONES),
    month=st.sampled_from(["2011-12", "2026-04", "2026-10", "2026-02"]),
    cents=st.integers(0, 10**14),
    idle=st.sampled_from(["share", "separate"]),
    gpus=st.integers(1, 8),
)
def test_the_fixed_cost_is_billed_to_the_cent_in_any_zone_and_month(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[str, str, int, int, str, str]],
    zone: str,
    month: str,
    cents: int,
    idle: str,
    gpus: int,
) -> None:
    """Whatever was used, wherever the month's midnights fall: the fixed-cost shares are
    whole cents, none negative, that add up to exactly the fixed cost, every row's total
    is its usage plus its share, and the same ledger gives the same bytes."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    with opened(f"sqlite:///{tmp_path_factory.mktemp('cb') / 'ledger.db'}") as ledger:
        first = datetime.fromisoformat(month + "-01").replace(tzinfo=UTC) - timedelta(days=27)
        ledger.record(
            [
                span(dept, first + timedelta(seconds=at), busy, busy * 1000, host=host,
                     tenant=tenant, currency=currency)
                for tenant, dept, at, busy, currency, host in calls
            ]
        )  # fmt: skip
        fixed = Decimal(cents).scaleb(-2)

        def run() -> tuple[str, list[object]]:
            result = chargeback(
                ledger,
                month,
                tz=tz,
                now=NOW,
                currency="USD",
                fixed_cost=fixed,
                idle=idle,
                gpus=gpus,
            )
            return to_csv(CHARGEBACK_COLUMNS, result.rows), result.rows

        text, rows = run()
        shares = [row["fixed_cost_share"] for row in rows]
        assert all(
            isinstance(s, Decimal) and s >= 0 and s == s.quantize(Decimal("0.01")) for s in shares
        )
        assert sum(shares, Decimal(0)) == fixed
        for row in rows:
            assert row["total_cost"] == row["usage_cost"] + int(row["fixed_cost_share"] * 1_000_000)
            if row["currency"] != "USD":
                assert row["fixed_cost_share"] == 0
        assert run()[0] == text


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=_calls,
    zone=st.sampled_from(_ZONES),
    ledger_zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kathmandu"]),
    month=st.sampled_from(["2026-10", "2026-03"]),
    cents=st.integers(0, 10**14),
    idle=st.sampled_from(["share", "separate"]),
    order=st.randoms(),
)
def test_the_csv_the_json_and_the_spans_tell_one_bill_whatever_the_order(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[str, str, int, int, str, str]],
    zone: str,
    ledger_zone: str,
    month: str,
    cents: int,
    idle: str,
    order: Any,
) -> None:
    """Months with a DST change, a ledger whose days begin in another zone than the bill's,
    the spans recorded in any order and batches: the CSV read back is the JSON, usage per
    currency is the exact sum of the month's spans, each department's fixed share is the
    largest-remainder split of its busy seconds, and the bytes do not depend on the order."""
    from zoneinfo import ZoneInfo

    from ollama_meter.reports import allocate, to_json

    tz = ZoneInfo(zone)
    first = datetime.fromisoformat(month + "-01").replace(tzinfo=UTC) - timedelta(days=27)
    spans = [
        span(dept, first + timedelta(seconds=at), busy, busy * 1000 + 1, host=host,
             tenant=tenant, currency=currency)
        for tenant, dept, at, busy, currency, host in calls
    ]  # fmt: skip
    fixed = Decimal(cents).scaleb(-2)
    texts = []
    for _ in range(2):
        ledger = Ledger(
            f"sqlite:///{tmp_path_factory.mktemp('cb') / 'ledger.db'}", zone=ledger_zone
        )
        shuffled = list(spans)
        order.shuffle(shuffled)
        for at in range(0, len(shuffled), 3):
            ledger.record(shuffled[at : at + 3])
        result = chargeback(
            ledger, month, tz=tz, now=NOW, currency="USD", fixed_cost=fixed, idle=idle
        )
        text = to_csv(CHARGEBACK_COLUMNS, result.rows)
        texts.append(text)
        ledger.dispose()
    assert texts[0] == texts[1]
    as_json = json.loads(to_json(CHARGEBACK_COLUMNS, result.rows))
    assert rows_of(text) == [{k: str(v) for k, v in row.items()} for row in as_json]
    window = parse_period(month, tz=tz, now=NOW)
    inside = [s for s in spans if window.start <= s.started_at < window.end]
    for currency in ("USD", "EUR"):
        billed = sum(Decimal(r["usage_cost"]) for r in as_json if r["currency"] == currency)
        assert billed == sum(
            (from_micros(s.cost_total) for s in inside if s.currency == currency), Decimal(0)
        )
    if idle == "share" and any(s.eval_duration_ns for s in inside):
        weights: dict[tuple[str, str], int] = {}
        for s in inside:
            key = (s.tenant, s.department)
            weights[key] = weights.get(key, 0) + (s.eval_duration_ns or 0)
        expected = allocate(cents, {k: w for k, w in weights.items() if w})
        got = {
            (r["tenant"], r["department"]): int(Decimal(r["fixed_cost_share"]) * 100)
            for r in as_json
            if r["currency"] == "USD" and Decimal(r["fixed_cost_share"])
        }
        assert got == {k: v for k, v in expected.items() if v}


_MINOR = {"JPY": 0, "ISK": 0, "KWD": 3, "BHD": 3, "USD": 2, "EUR": 2, "CLF": 4, "XAU": 6}
"""Places of each currency's smallest unit (ISO 4217; gold has none: the ledger's micro-unit)."""


@settings(max_examples=30, deadline=None)
@given(
    currency=st.sampled_from(sorted(_MINOR)),
    units=st.integers(0, 10**12),
    busy=st.lists(st.integers(1, 10**6), min_size=1, max_size=5),
    idle=st.sampled_from(["share", "separate"]),
)
@example(currency="JPY", units=1000, busy=[1, 1, 1], idle="share")
@example(currency="KWD", units=100_005, busy=[1, 1, 1], idle="share")
def test_the_fixed_cost_is_split_in_the_smallest_unit_of_its_currency(
    tmp_path_factory: pytest.TempPathFactory,
    currency: str,
    units: int,
    busy: list[int],
    idle: str,
) -> None:
    """A yen has no cents and a Kuwaiti dinar has 1,000 fils: a 1,000 JPY fixed cost was
    billed as 333.34 + 333.33 + 333.33 yen, amounts no one can pay, and 100.005 KWD was
    refused as "not in whole cents". Shares are whole units of the currency's own minor
    unit, shown with its places, and still add up to exactly the fixed cost."""
    from zoneinfo import ZoneInfo

    places = _MINOR[currency]
    if units > 10**12 // 10**places * 10**places:
        units //= 10**places  # within the largest fixed cost, a trillion units
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('cb') / 'ledger.db'}")
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [
            span(f"d{n}", at, seconds, seconds * 7, currency=currency)
            for n, seconds in enumerate(busy)
        ]
    )
    fixed = Decimal(units).scaleb(-places)
    result = chargeback(
        ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency=currency, fixed_cost=fixed,
        idle=idle,
    )  # fmt: skip
    ledger.dispose()
    shares = [row.fixed_cost_share for row in result.rows]
    assert all(s.as_tuple().exponent == -places for s in shares), shares
    assert sum(shares, Decimal(0)) == fixed
    for row in result.rows:
        assert row.total_cost == row.usage_cost + int(row.fixed_cost_share.scaleb(6))
    text = to_csv(CHARGEBACK_COLUMNS, result.rows)
    assert [Decimal(r["fixed_cost_share"]) for r in rows_of(text)] == shares


@pytest.mark.parametrize(
    ("currency", "amount", "says"),
    [
        ("JPY", "1000.5", "fixed cost 1000.5 JPY is finer than 1 JPY"),
        ("USD", "10.001", "fixed cost 10.001 USD is finer than a cent"),
        ("KWD", "1.0001", "fixed cost 1.0001 KWD is finer than 0.001 KWD"),
    ],
)
def test_a_fixed_cost_finer_than_its_currency_is_refused_saying_so(
    ledger: Ledger, currency: str, amount: str, says: str
) -> None:
    from zoneinfo import ZoneInfo

    from ollama_meter.errors import ValidationError

    with pytest.raises(ValidationError) as raised:
        chargeback(
            ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency=currency,
            fixed_cost=Decimal(amount),
        )  # fmt: skip
    assert str(raised.value).startswith(says), str(raised.value)
    assert "\n" not in str(raised.value)


@settings(max_examples=100, deadline=None)
@given(
    currency=st.sampled_from(sorted(_MINOR)),
    units=st.integers(0, 10**12),
    finer=st.integers(0, 10**20),
    digits=st.integers(1, 27),
)
def test_a_fixed_cost_is_taken_in_whole_units_or_refused_never_rounded(
    currency: str, units: int, finer: int, digits: int
) -> None:
    """However many digits the library is given (a Decimal holds 40 and more; its context
    rounds at 28): an amount that is whole units of the currency's smallest amount is taken
    as exactly those, any other is refused. 1.00000000000000000000000000001 USD was taken as
    100 cents."""
    from decimal import localcontext

    from ollama_meter.errors import ValidationError
    from ollama_meter.reports._chargeback import fixed_cost_units

    places = _MINOR[currency]
    with localcontext(prec=100):  # the amount as given, every digit of it
        amount = Decimal(units).scaleb(-places) + Decimal(finer).scaleb(-places - digits)
    if amount > Decimal(10**12):
        return
    if finer % 10**digits == 0:
        assert fixed_cost_units(amount, currency) == units + finer // 10**digits
    else:
        with pytest.raises(ValidationError):
            fixed_cost_units(amount, currency)


@pytest.mark.parametrize(
    ("currency", "amount", "shares"),
    [("KWD", "0.007", ["0.002", "0.002", "0.003"]), ("JPY", "7", ["2", "2", "3"])],
)
@pytest.mark.parametrize("finer", ["0.0071", "7.5"])
def test_the_cli_takes_a_fixed_cost_in_the_currencys_own_unit(
    cli,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    currency: str,
    amount: str,
    shares: list[str],
    finer: str,
) -> None:  # type: ignore[no-untyped-def]
    """--fixed-cost and OMETER_FIXED_MONTHLY_COST took at most two decimals whatever the
    currency: 0.007 KWD (7 fils) was refused."""
    monkeypatch.setenv("OMETER_DB_URL", ledger.url)
    monkeypatch.setenv("OMETER_CURRENCY", currency)
    monkeypatch.setenv("OMETER_TIMEZONE", "UTC")
    by_flag = cli("chargeback", "--month", "2026-11", "--fixed-cost", amount)
    assert by_flag.code == 0, by_flag.stderr
    billed = [r for r in rows_of(by_flag.stdout) if r["currency"] == currency]
    assert [r["fixed_cost_share"] for r in billed] == shares
    monkeypatch.setenv("OMETER_FIXED_MONTHLY_COST", amount)
    by_setting = cli("chargeback", "--month", "2026-11")
    assert by_setting.code == 0, by_setting.stderr
    assert by_setting.stdout == by_flag.stdout
    refused = cli("chargeback", "--month", "2026-11", "--fixed-cost", finer)
    places = {"KWD": 3, "JPY": 0}[currency]
    if len(finer.partition(".")[2]) > places:
        assert refused.code == 2, refused.stdout
        most = f"more than {places} decimal places" if places else "decimals; give a whole number"
        assert refused.stderr.strip() == f"error: --fixed-cost {finer} has {most}"
    else:
        assert refused.code == 0, refused.stderr


def test_a_month_not_cut_on_a_minute_counts_the_hosts_the_raw_spans_do(db_url: str) -> None:
    """Until 1972 Monrovia was UTC-0:44:30, so its months began at 00:44:30 UTC, inside a
    minute. Busy rollups are per minute: a host whose only call ended at 00:44:15, before
    March began there, was counted as a host of March (two hosts of capacity where the raw
    spans have one), and the idle row billed for a GPU that did nothing that month."""
    from zoneinfo import ZoneInfo

    from ollama_meter.ledger import raw_spans

    ledger = Ledger(db_url, zone="Africa/Monrovia")
    before = datetime(1971, 3, 1, 0, 44, 5, tzinfo=UTC)  # 23:59:35 on 28 February, local
    ledger.record(
        [
            span("sales", before, 10, 1, host="http://gpu1:11434"),
            span("sales", before + timedelta(hours=1), 10, 1, host="http://gpu2:11434"),
        ]
    )
    options: dict[str, Any] = {
        "tz": ZoneInfo("Africa/Monrovia"), "now": NOW, "currency": "USD",
        "fixed_cost": Decimal("3100.00"), "idle": "separate",
    }  # fmt: skip
    result = chargeback(ledger, "1971-03", **options)
    with raw_spans():
        expected = chargeback(ledger, "1971-03", **options)
    assert result.capacity_ns == expected.capacity_ns == 31 * 86_400 * SEC
    assert (result.rows, result.busy_ns) == (expected.rows, expected.busy_ns)
    assert result.busy_ns == 10 * SEC


def test_a_call_sent_to_no_server_adds_no_host_to_the_capacity(db_url: str) -> None:
    """A refused call (a budget, a rate limit, a full queue) names no server: it named the
    first configured one, so a month where only gpu1 served had two hosts of capacity and
    the idle row took half the fixed cost more than its share."""
    from zoneinfo import ZoneInfo

    ledger = Ledger(db_url)
    t = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [
            span("sales", t, 100, 1_000),
            make_span(
                tenant="acme", department="support", started_at=t, ended_at=t,
                upstream_host=NO_HOST, status="rejected", error_type="rate_limited",
                input_tokens=0, output_tokens=0, unpriced=False,
            ),
        ]
    )  # fmt: skip
    result = chargeback(
        ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency="USD",
        fixed_cost=Decimal("3000.00"), idle="separate",
    )  # fmt: skip
    assert result.capacity_ns == 30 * 86_400 * SEC  # gpu1's month, and no other
    assert result.busy_ns == 100 * SEC
    # 300,000 cents by 100 s of 2,592,000: 11.57 to sales, the cent left to its remainder
    assert [(r.tenant, r.department, r.requests, str(r.fixed_cost_share)) for r in result.rows] == [
        ("acme", "sales", 1, "0.12"),
        ("acme", "support", 1, "0.00"),
        ("__idle__", "__idle__", 0, "2999.88"),
    ]


def test_a_call_recorded_while_the_bill_is_read_is_in_all_of_it_or_none(db_url: str) -> None:
    """The usage (who used how many GPU seconds) and the busy time (how much of the capacity
    was used) were read in two transactions: a call a gateway or an import recorded between
    them was in the busy time but in nobody's usage, so with idle separate the departments
    carried a busy share split among those who had not used it. One snapshot: the bill
    is the ledger before the call, or after it, never half of each."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import event

    ledger = Ledger(db_url)
    t = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record([span("sales", t, 100, 1_000)])
    options: dict[str, Any] = {
        "tz": ZoneInfo("UTC"), "now": NOW, "currency": "USD",
        "fixed_cost": Decimal("2592.00"), "idle": "separate",
    }  # fmt: skip
    before = chargeback(ledger, "2026-11", **options)
    writer = Ledger(db_url)
    late = span("support", t + timedelta(days=1), 86_400, 1_000)
    seen: list[str] = []

    def record_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not seen and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)  # the bill's first read: another process records meanwhile
            writer.record([late])

    event.listen(ledger.engine, "after_cursor_execute", record_once)
    try:
        during = chargeback(ledger, "2026-11", **options)
    finally:
        event.remove(ledger.engine, "after_cursor_execute", record_once)
    after = chargeback(ledger, "2026-11", **options)
    writer.dispose()
    assert seen and after.busy_ns == before.busy_ns + 86_400 * SEC
    bill = (during.rows, during.busy_ns, during.capacity_ns)
    assert bill == (before.rows, before.busy_ns, before.capacity_ns)


@settings(max_examples=6, deadline=None)
@given(
    calls=_calls.filter(bool),
    zone=st.sampled_from(_ZONES),
    ledger_zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kathmandu"]),
    keep=st.lists(st.integers(15, 75), min_size=1, max_size=2),
    gpus=st.integers(1, 3),
)
def test_a_bill_is_the_same_bytes_after_any_prune(
    tmp_path_factory: pytest.TempPathFactory,
    calls: list[tuple[str, str, int, int, str, str]],
    zone: str,
    ledger_zone: str,
    keep: list[int],
    gpus: int,
) -> None:
    """Prunes whose horizon falls before, inside or after the month, in a ledger whose days
    begin in another zone than the bill's, several servers, calls busy across the month's
    edges: every bill (idle shared or separate, CSV and capacity) is what it was before."""
    from zoneinfo import ZoneInfo

    from ollama_meter.ledger import prune

    tz = ZoneInfo(zone)
    month, first = "2026-10", datetime(2026, 9, 4, tzinfo=UTC)
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('cb') / 'l.db'}", zone=ledger_zone)
    ledger.record(
        [
            span(dept, first + timedelta(seconds=at), busy, busy * 1000 + 1, host=host,
                 tenant=tenant, currency=currency)
            for tenant, dept, at, busy, currency, host in calls
        ]
    )  # fmt: skip

    def bills() -> list[tuple[str, int, int]]:
        made = []
        for idle in ("share", "separate"):
            result = chargeback(
                ledger, month, tz=tz, now=NOW, currency="USD",
                fixed_cost=Decimal("2400.17"), idle=idle, gpus=gpus,
            )  # fmt: skip
            made.append(
                (to_csv(CHARGEBACK_COLUMNS, result.rows), result.busy_ns, result.capacity_ns)
            )
        return made

    before = bills()
    for days in sorted(keep, reverse=True):  # 2 December less 15 to 75 days: around October
        prune(ledger, days, now=NOW)
        assert bills() == before
    ledger.dispose()


@pytest.mark.parametrize(
    ("fixed_in", "calls_in", "warned"),
    [
        ("USD", ["EUR"], "only in EUR"),
        ("USD", ["EUR", "JPY"], "only in EUR and JPY"),
        ("EUR", ["EUR"], None),
        ("USD", ["EUR", "USD"], None),  # the fixed cost's currency has calls: nothing to say
    ],
)
def test_a_fixed_cost_in_a_currency_no_call_cost_anything_in_is_said(
    sqlite_url: str, fixed_in: str, calls_in: list[str], warned: str | None
) -> None:
    """Prices in EUR and OMETER_CURRENCY left at USD: the 2,400 meant in euros was billed as
    800 USD a department beside their euro usage, rows never added to it, without a word."""
    from zoneinfo import ZoneInfo

    ledger = Ledger(sqlite_url)
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [
            span(dept, at + timedelta(hours=n), 10, 1_000_000, currency=currency)
            for n, (dept, currency) in enumerate(
                zip(["sales", "ops", "legal"], calls_in * 3, strict=False)
            )
        ]
    )
    bill = chargeback(
        ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency=fixed_in,
        fixed_cost=Decimal(2400),
    )  # fmt: skip
    said = [w for w in bill.warnings if "the fixed cost is in" in w]
    if warned is None:
        assert said == []
    else:
        spent = warned.removeprefix("only in ").replace(" and ", " or ")
        assert said == [
            f"the fixed cost is in {fixed_in} (OMETER_CURRENCY), but the calls of 2026-11 cost "
            f"nothing in {fixed_in}, {warned}: its shares are rows of their own, never added to "
            f"the calls' cost. If the fixed cost is in {spent}, set OMETER_CURRENCY to that and "
            "bill again"
        ]
    # no fixed cost, nothing billed apart: nothing to say
    plain = chargeback(ledger, "2026-11", tz=ZoneInfo("UTC"), now=NOW, currency=fixed_in)
    assert not [w for w in plain.warnings if "the fixed cost is in" in w]
