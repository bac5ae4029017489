"""Dates on the command line against a ledger in another zone than the configured one."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ollama_meter.ledger import Ledger, SpanFilter, prune
from tests.factories import make_span


@pytest.mark.parametrize("configured", ["America/New_York", "Asia/Tokyo"])
def test_reprice_since_a_rules_first_day_reprices_every_call_that_rule_prices(
    cli,  # type: ignore[no-untyped-def]
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    configured: str,
) -> None:
    """A rule from 1 November prices calls from Berlin's midnight on a Berlin ledger; a
    reprice --since 2026-11-01 read that date at New York's midnight, five hours later, and
    left the calls of those hours at the cost of the rule before, while the rules said the new
    one (from Tokyo's, eight hours earlier, it also moved calls of 31 October)."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    monkeypatch.setenv("OMETER_TIMEZONE", configured)
    ledger = Ledger(db_url, zone="Europe/Berlin")
    early = datetime(2026, 10, 31, 16, 30, tzinfo=UTC)  # 31 October everywhere but Tokyo
    late = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)  # 00:30 on 1 November in Berlin
    ledger.record([make_span(started_at=early), make_span(started_at=late)])
    set_rule = ("pricing", "set", "*", "--input-per-1m", "1000", "--output-per-1m", "2000")
    assert cli(*set_rule, "--from", "2026-11-01").code == 0
    result = cli("reprice", "--since", "2026-11-01")
    assert result.code == 0, result.stderr
    assert "examined 1 span(s) since 2026-11-01; 1 changed" in result.stdout
    [moved] = ledger.latest(SpanFilter(since=late))
    assert (moved.cost_total, moved.unpriced) == (7 * 1000 + 12 * 2000, False)
    [kept] = ledger.latest(SpanFilter(until=late))
    assert kept.unpriced
    # and through a date: the ledger's day too
    result = cli("reprice", "--since", "2026-10-31", "--until", "2026-10-31")
    assert "examined 1 span(s) from 2026-10-31 through 2026-10-31" in result.stdout
    assert json.loads(cli("log", "--json").stdout)[0]["cost"] == "0.031000"


@pytest.mark.parametrize("typed", ["2026-11", " 2026-11\n"])  # read as 2026-11; said as it
@pytest.mark.parametrize("configured", ["UTC", "America/New_York", "Europe/Berlin"])
def test_a_bill_cut_at_another_zone_than_the_ledgers_says_so_and_bills_as_asked(
    cli,  # type: ignore[no-untyped-def]
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    configured: str,
    typed: str,
) -> None:
    """Budgets and price dates run on the ledger's months; a chargeback on a machine set to
    another zone cut its month there, silently: a call at 23:30 UTC on 30 November was
    November's for the budget and December's on a Berlin bill of a UTC ledger. The bill is
    still cut where it was asked, and stderr says where the ledger's months begin."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    monkeypatch.setenv("OMETER_TIMEZONE", configured)
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record([make_span(started_at=datetime(2026, 11, 10, 12, tzinfo=UTC), cost_total=5)])
    result = cli("chargeback", "--month", typed)  # a month typed with a newline split the line
    assert result.code == 0, result.stderr
    assert result.stdout.count("\n") == 2  # the header and the one department
    if configured == "Europe/Berlin":
        assert result.stderr == ""
    else:
        assert result.stderr == (
            f"warning: this bill cuts 2026-11 at midnight in {configured} (OMETER_TIMEZONE); "
            "the ledger's days and months, its budgets' and price rules' dates, begin at "
            "midnight in Europe/Berlin: set OMETER_TIMEZONE=Europe/Berlin to bill those\n"
        )


@pytest.mark.parametrize(
    ("kept", "configured", "month"),
    [
        ("UTC", "Etc/UTC", "2026-11"),  # Debian's /etc/timezone name for UTC
        ("UTC", "Zulu", "2026-07"),
        ("America/New_York", "US/Eastern", "2026-03"),
        ("Asia/Kolkata", "Asia/Calcutta", "2026-11"),
        ("Europe/Kyiv", "Europe/Kiev", "2026-10"),
        ("UTC", "Europe/London", "2026-11"),  # GMT all November: the same month to the second
    ],
)
def test_a_bill_cut_at_the_ledgers_midnights_under_another_name_warns_of_nothing(
    cli,  # type: ignore[no-untyped-def]
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    kept: str,
    configured: str,
    month: str,
) -> None:
    """The warning compared the zones' names: a UTC ledger billed on a host set to Etc/UTC
    said every month, on the cron job's stderr, that the bill was cut elsewhere than the
    ledger's months and to set OMETER_TIMEZONE=UTC, for a bill that was those months."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    monkeypatch.setenv("OMETER_TIMEZONE", configured)
    ledger = Ledger(db_url, zone=kept)
    ledger.record(
        [make_span(started_at=datetime.fromisoformat(f"{month}-10T12:00Z"), cost_total=5)]
    )
    result = cli("chargeback", "--month", month)
    assert (result.code, result.stderr) == (0, "")
    assert result.stdout.count("\n") == 2
    # London is not UTC in July: that bill is cut an hour apart, and says so
    monkeypatch.setenv("OMETER_TIMEZONE", "Europe/London")
    if kept == "UTC":
        said = cli("chargeback", "--month", "2026-07").stderr
        assert "begin at midnight in UTC: set OMETER_TIMEZONE=UTC" in said


@pytest.mark.parametrize(
    ("kept", "new", "months"),
    [
        ("UTC", "Etc/UTC", ("2026-07", "2026-11")),
        ("Asia/Kolkata", "Asia/Calcutta", ("2026-10", "2026-11")),
        ("UTC", "Europe/London", ("2026-11",)),  # GMT all November: every day cut alike
        ("UTC", "Europe/London", ("2026-07", "2026-11")),  # BST in July: cut an hour apart
    ],
)
def test_a_pruned_ledger_takes_another_name_of_its_zone_and_no_other(
    cli,  # type: ignore[no-untyped-def]
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    kept: str,
    new: str,
    months: tuple[str, ...],
) -> None:
    """`db rollup --zone Etc/UTC` on a pruned UTC ledger was refused (its days 'cannot be cut
    again at Etc/UTC's midnight'), and on one not pruned cut every day again, to the same
    cells. A zone that begins and ends every day the ledger holds where its zone does takes
    its cells as they are; one that does not is refused as before."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    monkeypatch.setenv("OMETER_TIMEZONE", kept)
    ledger = Ledger(sqlite_url, zone=kept)
    ledger.record(
        [
            make_span(started_at=datetime.fromisoformat(f"{month}-{day:02d}T{hour:02d}:30Z"))
            for month in months
            for day in (1, 15, 28)
            for hour in (0, 12, 23)
        ]
    )
    bills = {month: cli("chargeback", "--month", month).stdout for month in months}
    prune(ledger, 1, now=datetime(2026, 12, 6, tzinfo=UTC))
    moved = cli("db", "rollup", "--zone", new)
    alike = "2026-07" not in months or new == "Etc/UTC"
    if alike:
        assert moved.code == 0, moved.stderr
        assert ledger.zone() == new
    else:
        assert moved.code != 0 and "were pruned" in moved.stderr
        assert ledger.zone() == kept
    monkeypatch.setenv("OMETER_TIMEZONE", ledger.zone())
    assert {month: cli("chargeback", "--month", month).stdout for month in months} == bills


def test_a_bill_file_cut_at_another_zone_than_the_ledgers_says_so_to_whoever_reads_it(
    cli,  # type: ignore[no-untyped-def]
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The HTML bill is mailed to finance, who never see the job's stderr: its notes said the
    month was not over and which calls were unpriced, but not that it was cut at other
    midnights than the ledger's months, the budgets' and the price rules'."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    monkeypatch.setenv("OMETER_TIMEZONE", "UTC")
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record([make_span(started_at=datetime(2026, 11, 10, 12, tzinfo=UTC), cost_total=5)])
    result = cli("chargeback", "--month", "2026-11", "--format", "html")
    assert result.code == 0, result.stderr
    said = "this bill cuts 2026-11 at midnight in UTC (OMETER_TIMEZONE)"
    assert said in result.stderr
    assert said in result.stdout
    assert "set OMETER_TIMEZONE=Europe/Berlin to bill those" in result.stdout
    monkeypatch.setenv("OMETER_TIMEZONE", "Europe/Berlin")  # the ledger's: nothing to say
    result = cli("chargeback", "--month", "2026-11", "--format", "html")
    assert (result.code, result.stderr) == (0, "")
    assert "this bill cuts" not in result.stdout
