"""A cap that can never bind, another over the same calls being as low or lower, says so.

``ometer budget set sales --daily 200 --monthly 100`` saved both, exit 0, and said nothing: the
hard monthly cap refuses calls before a day's spend can reach 200, so the daily cap binds no
call while whoever set it thinks the days capped. As for a cap on a name no call has
(``_hints.note_unused_scope``), both are kept as set (the other may be changed next), with a
note on stderr. So for a department's ``--rpm`` at or above its tenant's (all departments).
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.records import PERIODS, Budget, never_reached, unreached_notes
from ollama_meter.records._budget import MOST_SPANNED


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    return sqlite_url


def stored(cli) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    listed = json.loads(cli("budget", "list", "--json").stdout)
    return [
        (b["id"], b["tenant"], b["department"], b["period"], b["limit"], b["hard"]) for b in listed
    ]


def test_a_daily_cap_above_the_monthly_one_is_kept_and_said(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    done = cli("budget", "set", "sales", "--tenant", "acme", "--daily", "200", "--monthly", "100")
    assert done.code == 0
    assert done.stdout.splitlines() == [
        "budget 1: acme/sales daily limit 200.000000 USD (hard, alerts at 75%, 90%, 100%)",
        "budget 2: acme/sales monthly limit 100.000000 USD (hard, alerts at 75%, 90%, 100%)",
    ]
    assert done.stderr == (
        "note: budget 1 (acme/sales daily 200.000000 USD) can never reach its limit: hard "
        "budget 2 (acme/sales monthly 100.000000 USD) refuses calls first\n"
    )
    assert stored(cli) == [
        (1, "acme", "sales", "day", "200.000000", True),
        (2, "acme", "sales", "month", "100.000000", True),
    ]


def test_a_cap_set_later_that_outranks_one_already_there_names_it(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("budget", "set", "sales", "--tenant", "acme", "--weekly", "30").stderr == ""
    # A tenant-wide hard cap counts the department's spend too; a week spans two months.
    done = cli("budget", "set", "--tenant", "acme", "--monthly", "15")
    assert done.code == 0
    assert done.stderr == (
        "note: budget 1 (acme/sales weekly 30.000000 USD) can never reach its limit: hard "
        "budget 2 (acme monthly 15.000000 USD) refuses calls first\n"
    )
    assert stored(cli) == [
        (1, "acme", "sales", "week", "30.000000", True),
        (2, "acme", None, "month", "15.000000", True),
    ]


def test_department_budgets_that_can_never_bind_are_said_once(  # type: ignore[no-untyped-def]
    cli, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DEPARTMENT_BUDGETS`` seeded the same two caps as `budget set` and said nothing: the
    seeding says the same note (through the log, as the gateway seeds them too), once, when
    the budgets it brings in change."""
    assert cli("db", "upgrade").code == 0
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 200, "monthly": 100}}')
    done = cli("budget", "list", "--json")
    assert done.code == 0
    assert done.stderr == (
        "WARNING ollama_meter.meter: note: budget 1 (*/sales daily 200.000000 USD) can never "
        "reach its limit: hard budget 2 (*/sales monthly 100.000000 USD) refuses calls first "
        "(DEPARTMENT_BUDGETS)\n"
    )
    assert cli("budget", "list", "--json").stderr == ""  # unchanged: nothing new to say
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 50, "monthly": 100}}')
    assert cli("budget", "list", "--json").stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["--daily", "50", "--monthly", "100"],  # the daily cap binds first
        ["--daily", "200", "--monthly", "100", "--soft"],  # a soft monthly cap refuses nothing
        ["--weekly", "29.99", "--monthly", "15"],  # a week across two months may reach 29.99
    ],
)
def test_caps_that_can_each_bind_say_nothing(cli, db: str, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    done = cli("budget", "set", "sales", "--tenant", "acme", *args)
    assert (done.code, done.stderr) == (0, "")


def test_a_department_rate_at_or_above_its_tenants_is_kept_and_said(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("limit", "set", "--tenant", "acme", "--rpm", "60", "--concurrency", "4").stderr == ""
    done = cli("limit", "set", "sales", "--tenant", "acme", "--rpm", "60", "--tpm", "900")
    assert done.code == 0
    assert done.stderr == (
        "note: --rpm of acme/sales can never bind: acme (all)'s are as low or lower (60 calls/min, "
        "4 at once), and count every call of it\n"
    )
    done = cli("limit", "set", "sales", "--tenant", "acme", "--concurrency", "9")
    assert done.stderr == (
        "note: --rpm, --concurrency of acme/sales can never bind: acme (all)'s are as low or lower "
        "(60 calls/min, 4 at once), and count every call of it\n"
    )
    rows = json.loads(cli("limit", "list", "--json").stdout)
    assert [(r["tenant"], r["department"], r["rpm"], r["tpm"], r["concurrency"]) for r in rows] == [
        ("acme", None, 60, None, 4),
        ("acme", "sales", 60, 900, 9),
    ]
    assert (
        cli("limit", "set", "sales", "--tenant", "acme", "--rpm", "59", "--concurrency", "3").stderr
        == ""
    )


def spanned(longer: str, shorter: str) -> int:
    """How many periods ``shorter`` one period ``longer`` overlaps at most, counted day by day
    over 28 years (every weekday a year and a month can start on, leap years too)."""

    def label(day: date, period: str) -> tuple[int, ...]:
        if period == "day":
            return (day.toordinal(),)
        if period == "week":
            return day.isocalendar()[:2]
        return (day.year, day.month)

    seen: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    day = date(2000, 1, 1)
    while day.year < 2028:
        seen.setdefault(label(day, longer), set()).add(label(day, shorter))
        day += timedelta(days=1)
    return max(len(found) for found in seen.values())


@pytest.mark.parametrize(("longer", "shorter"), [(p, q) for p in PERIODS for q in PERIODS])
def test_how_many_periods_one_overlaps_is_what_the_calendar_says(longer: str, shorter: str) -> None:
    assert MOST_SPANNED[longer, shorter] == spanned(longer, shorter)


budgets = st.builds(
    Budget,
    tenant=st.sampled_from(["acme", "*"]),
    department=st.sampled_from([None, "sales"]),
    period=st.sampled_from(PERIODS),
    limit=st.sampled_from([1, 7, 10**6]) | st.integers(1, 10**9),
    currency=st.sampled_from(["USD", "EUR"]),
    hard=st.booleans(),
    source=st.sampled_from(["cli", "env", "api"]),
    id=st.none() | st.integers(1, 3),
)


def caps_below(budget: Budget, under: Budget) -> bool:
    covers = under.tenant in (budget.tenant, "*") and under.department in (None, budget.department)
    most = MOST_SPANNED[budget.period, under.period] * under.limit  # its spend in any period
    return (
        under.hard
        and under != budget
        and under.currency == budget.currency
        and covers
        and budget.limit >= most
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=budgets, under=budgets)
def test_a_budget_is_never_reached_only_under_a_hard_cap_on_all_its_spend(
    budget: Budget, under: Budget
) -> None:
    """Two caps on the same spend, equal (same scope, period and limit), each refuse as soon as
    the other: both were said never to bind, each because of the other, when either binds
    alone. Only the later one (by id) is said never to bind."""
    assert never_reached(budget, under) <= caps_below(budget, under)
    if not caps_below(under, budget):
        assert never_reached(budget, under) == caps_below(budget, under)
    assert not (never_reached(budget, under) and never_reached(under, budget))
    if caps_below(budget, under) and caps_below(under, budget):
        assert never_reached(budget, under) or never_reached(under, budget)


@pytest.mark.parametrize("saved", [{1}, {2}, {1, 2}])
def test_of_two_equal_caps_only_the_later_is_said(saved: set[int]) -> None:
    first, second = (
        Budget("acme", "sales", "month", 10**8, "USD", source=source, id=number)
        for number, source in ((1, "api"), (2, "sync"))  # the library's own sources
    )
    assert unreached_notes([first, second], saved) == [
        "budget 2 (acme/sales monthly 100.000000 USD) can never reach its limit: hard "
        "budget 1 (acme/sales monthly 100.000000 USD) refuses calls first"
    ]
