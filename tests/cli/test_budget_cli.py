"""`ometer budget ...` and budget refusals as a user sees them."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from ollama_meter.testing import OllamaEmulator


def test_budget_commands(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0  # a ledger with nothing in it (none: "no ledger at")
    assert "no budgets" in cli("budget", "list").stdout
    assert "no budgets" in cli("budget", "status").stdout
    first = cli("budget", "set", "sales", "--tenant", "acme", "--daily", "5", "--monthly", "100")
    assert first.code == 0, first.stderr
    assert "budget 1: acme/sales daily limit 5.000000 USD (hard" in first.stdout
    assert "budget 2: acme/sales monthly limit 100.000000 USD" in first.stdout
    assert (
        cli(
            "budget", "set", "support", "--monthly", "40", "--soft", "--thresholds", "50,75,90,100"
        ).code
        == 0
    )
    assert cli("budget", "set", "--tenant", "acme", "--monthly", "500").code == 0
    assert (
        cli("budget", "set", "sales", "--tenant", "acme", "--daily", "6").code == 0
    )  # replaces budget 1
    listed = json.loads(cli("budget", "list", "--json").stdout)
    assert [
        (b["id"], b["tenant"], b["department"], b["period"], b["limit"], b["hard"], b["thresholds"])
        for b in listed
    ] == [
        (1, "acme", "sales", "day", "6.000000", True, [75, 90, 100]),
        (2, "acme", "sales", "month", "100.000000", True, [75, 90, 100]),
        (3, "default", "support", "month", "40.000000", False, [50, 75, 90, 100]),
        (4, "acme", None, "month", "500.000000", True, [75, 90, 100]),
    ]
    assert "acme/sales" in cli("budget", "list").stdout
    cli("pricing", "set", "*", "--per-request", "1.5")
    assert cli("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi").code == 0
    status = json.loads(cli("budget", "status", "--json").stdout)
    daily = status[0]
    assert (daily["spent"], daily["percent"], daily["state"], daily["period"]) == (
        "1.500000",
        25,
        "ok",
        "day",
    )
    assert daily["period_label"] == daily["period_start"][:10]
    table = cli("budget", "status").stdout
    assert "25%" in table and "acme/sales" in table
    assert cli("budget", "rm", "4").code == 0
    assert "no budget with id 4" in cli("budget", "rm", "4").stderr
    assert "at least one of --daily" in cli("budget", "set", "x").stderr
    assert "must be more than 0" in cli("budget", "set", "x", "--daily", "0").stderr
    assert (
        "whole percentages"
        in cli("budget", "set", "x", "--daily", "1", "--thresholds", "most").stderr
    )


def test_the_department_may_be_given_as_dept_as_every_other_command_takes_it(  # type: ignore[no-untyped-def]
    cli, db: str
) -> None:
    """``budget set --dept sales`` (as chat, run and report take it) is ``budget set sales``."""
    for args in (["--dept", "sales"], ["-d", "sales"], ["sales", "--department", "sales"]):
        done = cli("budget", "set", *args, "--tenant", "acme", "--monthly", "100")
        assert done.stdout == (
            "budget 1: acme/sales monthly limit 100.000000 USD (hard, alerts at 75%, 90%, 100%)\n"
        ), done.stderr
    both = cli("budget", "set", "support", "--dept", "sales", "--monthly", "5")
    assert (both.code, both.stderr) == (
        2,
        "error: two departments given ('support' and --dept 'sales'); give one\n",
    )
    assert [b["department"] for b in json.loads(cli("budget", "list", "--json").stdout)] == [
        "sales"
    ]


def test_refusal_exits_3_with_one_line_and_a_rejected_span(
    cli, db: str, emulator: OllamaEmulator
) -> None:  # type: ignore[no-untyped-def]
    cli("pricing", "set", "*", "--per-request", "2")
    # No threshold the first call crosses: its alert (a WARNING line of its own) may still be
    # going out when the process ends, on a loaded machine, and the next run sends it again.
    cli("budget", "set", "sales", "--tenant", "acme", "--monthly", "3", "--thresholds", "100")
    assert cli("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi").code == 0
    before = len(emulator.calls)
    refused = cli("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b", "hi")
    assert refused.code == 3
    # The caller's one line, after the budget's refusal alert in the log (its channel here).
    alert, line = refused.stderr.strip().split("\n")
    assert alert.startswith("WARNING ollama_meter.alerts: budget alert: Budget 1 (acme/sales, ")
    assert alert.endswith(
        "refused a call: spent 2.000000 of 3.000000 USD (66% used), 1.000000 left, and the "
        "call may cost up to 2.000000; calls that may cost more than is left are refused "
        "until the period ends or the limit is raised"
    )
    assert line.startswith("error: hard budget 1 for acme/sales (monthly ")
    assert "spent 2.000000 of 3.000000 USD" in line
    assert len(emulator.calls) == before
    (span,) = json.loads(cli("log", "--json", "--status", "rejected").stdout)
    assert (span["error_type"], span["http_status"], span["cost"]) == (
        "budget_exceeded",
        429,
        "0.000000",
    )


def test_department_budgets_variable(
    cli, db: str, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cli("pricing", "set", "*", "--per-request", "2")
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 5, "monthly": 100}}')
    assert cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "one").code == 0
    assert cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "two").code == 0
    refused = cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "three")
    assert refused.code == 3 and "default/sales (daily" in refused.stderr
    listed = json.loads(cli("budget", "list", "--json").stdout)
    assert [(b["tenant"], b["period"], b["source"]) for b in listed] == [
        ("*", "day", "env"),
        ("*", "month", "env"),
    ]
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": "five"}}')
    bad = cli("budget", "list")
    assert (
        bad.code == 2
        and bad.stderr.strip()
        == "error: DEPARTMENT_BUDGETS: 'sales' daily 'five' is not a number; "
        "write it with the digits 0-9 and a point, such as 12.50"
    )
    monkeypatch.setenv("DEPARTMENT_BUDGETS", "{sales")
    assert cli("chat", "hi").stderr.startswith("error: DEPARTMENT_BUDGETS: not valid JSON")


def test_a_budget_the_ledger_could_not_read_back_is_never_stored(
    cli, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A typo in DEPARTMENT_BUDGETS or --thresholds is one line; it never poisons the ledger."""
    assert cli("db", "upgrade").code == 0
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 5, "thresholds": [true, 50]}}')
    refused = cli("budget", "list")
    assert refused.code == 2 and "thresholds must be a list of whole percentages" in refused.stderr
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 5, "soft": "false"}}')
    assert '"soft" must be true or false' in cli("budget", "list").stderr
    monkeypatch.delenv("DEPARTMENT_BUDGETS")
    many = ",".join(str(t) for t in range(990, 1001))  # 11 thresholds: past the ledger's column
    assert (
        "1 to 10 whole percentages"
        in cli("budget", "set", "x", "--daily", "1", "--thresholds", many).stderr
    )
    assert cli("budget", "list").stdout.startswith("no budgets")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--daily", ""], "error: --daily '' is not a number"),
        (["--weekly", " "], "error: --weekly ' ' is not a number"),
        (["--monthly", "12,50"], "error: --monthly '12,50' is not a number"),
        ([], "error: give at least one of --daily, --weekly, --monthly"),
    ],
)
def test_a_limit_given_empty_is_named(cli, sqlite_url: str, args: list[str], error: str) -> None:  # type: ignore[no-untyped-def]
    """`--daily "$LIMIT"` with LIMIT unset was told to give one of --daily, --weekly, --monthly:
    the limit it gave, empty, was taken for no limit at all. A value typed wrong exits 2, as it
    does in every command (`pricing set`, `chargeback`); `budget set` exited 1."""
    result = cli("budget", "set", "sales", *args, "--db", sqlite_url)
    assert (result.code, result.stderr.startswith(error), result.stdout) == (2, True, "")
    assert "no ledger at" in cli("budget", "list", "--db", sqlite_url).stderr  # nor made


def test_any_use_shows_in_the_bar_and_none_shows_nothing(
    cli, db: str, emulator: OllamaEmulator
) -> None:  # type: ignore[no-untyped-def]
    """The bar is 10 cells of 10 %, drawn by halves: a budget used 0.15 % (or anything under
    5 %) showed a blank bar, the same as one never used."""
    for dept in ("sales", "support"):
        assert cli("budget", "set", dept, "--daily", "1000").code == 0
    cli("pricing", "set", "*", "--per-request", "1.5")
    assert cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "hi").code == 0
    rows = {
        line.split()[3]: line for line in cli("budget", "status").stdout.splitlines() if "/" in line
    }
    assert "0%" in rows["default/sales"] and "╸" in rows["default/sales"]
    assert "━" not in rows["default/support"] and "╸" not in rows["default/support"]


@given(limit=st.integers(1, 10**15), share=st.fractions(0, 2))
def test_the_bar_is_blank_only_for_no_use(limit: int, share: Fraction) -> None:
    from rich.console import Console

    from ollama_meter.cli.budget import use_bar

    spent = int(limit * share)
    console = Console(no_color=True, width=40)
    with console.capture() as shown:
        console.print(use_bar(spent, limit, "green"))
    drawn = shown.get().strip()
    assert (drawn == "") == (spent == 0), (spent, limit, drawn)
    assert len(drawn) <= 10


def test_budget_set_beside_a_row_edited_by_hand_saves_and_names_that_row(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """Its notes read every budget: a row no budget can be made of (a limit edited to 0 in
    SQL) ended a save that had worked with its `error:` line and exit 1."""
    import sqlalchemy as sa

    assert cli("budget", "set", "sales", "--tenant", "acme", "--daily", "5").code == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budgets SET limit_micros = 0 WHERE id = 1")
    engine.dispose()
    saved = cli("budget", "set", "support", "--tenant", "acme", "--monthly", "3")
    assert saved.code == 0, saved.stderr
    assert "budget 2: acme/support monthly limit 3.000000 USD" in saved.stdout
    assert "error:" not in saved.stderr
    assert "note: budget 1 in the ledger cannot be read: a budget's limit must be" in saved.stderr


@pytest.mark.parametrize(
    "command", [("status",), ("status", "--json"), ("list",), ("list", "--json")]
)
def test_budget_status_and_list_show_every_budget_beside_a_row_edited_by_hand(  # type: ignore[no-untyped-def]
    cli, db: str, command: tuple[str, ...]
) -> None:
    """One row edited to a limit of 0 hid every other budget: `ometer budget status` (a cron
    job's look at the month) and `list` were that row's `error:` line and exit 1, as the
    dashboard was a 503. Each now shows the others, and names the row on stderr."""
    import sqlalchemy as sa

    assert cli("budget", "set", "sales", "--tenant", "acme", "--daily", "5").code == 0
    assert cli("budget", "set", "support", "--tenant", "acme", "--monthly", "3").code == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budgets SET limit_micros = 0 WHERE id = 1")
    engine.dispose()
    shown = cli("budget", *command)
    assert shown.code == 0, shown.stderr
    if "--json" in command:
        assert [row["id"] for row in json.loads(shown.stdout)] == [2]
    else:
        assert "acme/support" in shown.stdout and "acme/sales" not in shown.stdout
    assert shown.stderr.startswith(
        "note: acme/sales: budget 1 in the ledger cannot be read: a budget's limit"
    )


HAND_EDITS = [
    ("limit_micros", 0),
    ("limit_micros", -5_000_000),
    ("currency", "XX"),
    ("period", "hourly"),
]
"""Budget rows edited by hand in SQL to what no budget can be: budgets 1 to 4."""


def test_budget_status_and_list_show_the_readable_budgets_and_name_each_unreadable_row(  # type: ignore[no-untyped-def]
    cli, db: str
) -> None:
    """One row edited by hand made both commands an `error:` line naming it, exit 1, and
    nothing more: no other budget was shown, nor any other row it could not read. Each
    readable budget is shown (the table, or the JSON list of them on stdout) and each other
    row is a `note:` on stderr with its scope and what to do; exit 0, as for every list."""
    import sqlalchemy as sa

    for dept in ("sales", "legal", "ops", "hr", "it"):
        assert cli("budget", "set", dept, "--tenant", "acme", "--monthly", "7").code == 0
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        for budget_id, (column, value) in enumerate(HAND_EDITS, 1):
            conn.execute(
                sa.text(f"UPDATE budgets SET {column} = :value WHERE id = :id"),
                {"value": value, "id": budget_id},
            )
    engine.dispose()
    for command in ("list", "status"):
        for args in ((), ("--json",)):
            result = cli("budget", command, *args)
            assert result.code == 0, (command, args, result.stderr)
            said = " ".join(result.stderr.split())
            for budget_id, dept in enumerate(("sales", "legal", "ops", "hr"), 1):
                assert (
                    f"note: acme/{dept}: budget {budget_id} in the ledger cannot be read:" in said
                ), said
                assert f"remove it with `ometer budget rm {budget_id}`" in said
            assert said.count("note:") == len(HAND_EDITS)
            if args:
                shown = json.loads(result.stdout)
                assert [(b["id"], b["department"], b["limit"]) for b in shown] == [
                    (5, "it", "7.000000")
                ]
            else:
                assert "acme/it" in result.stdout and "7.00" in result.stdout
                assert "acme/sales" not in result.stdout and "no budgets" not in result.stdout
