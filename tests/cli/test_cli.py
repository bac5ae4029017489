"""The ometer commands, run through the real entry point against the emulator."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from ollama_meter.ledger import HEAD_REVISION
from ollama_meter.testing import Fault, OllamaEmulator, expected_reply, unreachable_url

PRICE_LLAMA = ("pricing", "set", "llama3.1:*", "--input-per-1m", "1000", "--output-per-1m", "2000")


def test_chat_streams_reply_and_prints_footer(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    assert cli(*PRICE_LLAMA).code == 0
    result = cli(
        "chat", "--dept", "sales", "--tenant", "acme", "-m", "llama3.1:8b", "hello there friend"
    )
    assert result.code == 0, result.stderr
    assert result.stdout.strip()
    assert "3 in /" in result.stderr and "USD" in result.stderr and "TTFT" in result.stderr
    logged = json.loads(cli("log", "--json").stdout)
    assert len(logged) == 1
    span = logged[0]
    assert (span["tenant"], span["department"], span["model"], span["status"]) == (
        "acme",
        "sales",
        "llama3.1:8b",
        "ok",
    )
    assert span["input_tokens"] == 3
    assert span["cost"] == f"{Decimal(3 * 1000 + span['output_tokens'] * 2000) / 1_000_000:.6f}"
    expected = expected_reply("llama3.1:8b", [{"role": "user", "content": "hello there friend"}])
    assert result.stdout == expected.content + "\n"
    assert span["output_tokens"] == expected.output_tokens


def test_chat_reads_the_prompt_from_stdin_when_given_as_a_dash(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator
) -> None:
    """``ometer chat -`` is cat's convention: the prompt is stdin, never the text "-"."""
    result = cli("chat", "--dept", "support", "--json", "-", stdin="summarise this\n")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["input_tokens"] == 2
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.body["messages"] == [{"role": "user", "content": "summarise this"}]
    assert "stdin was empty" in cli("chat", "-", stdin="").stderr


def test_chat_json_and_stdin(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "chat",
        "--dept",
        "support",
        "-m",
        "qwen2.5:7b",
        "--json",
        "--no-stream",
        stdin="summarise this\n",
    )
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["input_tokens"] == 2
        and data["department"] == "support"
        and data["tenant"] == "default"
    )
    assert data["cost"] == "0.000000" and data["unpriced"] is True
    assert set(data["cost_parts"]) == {"tokens", "compute", "energy", "fee"}
    assert data["durations_ns"]["eval"] > 0
    (logged,) = json.loads(cli("log", "--json").stdout)
    assert data["span_id"] == logged["id"]
    assert {k: v for k, v in data.items() if k not in ("reply", "span_id")} == logged
    assert data["reply"]


def test_chat_options_and_system_reach_ollama(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "chat",
        "-m",
        "llama3.1:8b",
        "--system",
        "be brief",
        "--option",
        "num_predict=5",
        "--option",
        "temperature=0.5",
        "--json",
        "hi",
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["output_tokens"] == 5
    body = emulator.requests[-1].body
    assert body["options"] == {"num_predict": 5, "temperature": 0.5}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_chat_errors_are_one_line_exit_1_and_recorded(
    cli, db: str, emulator: OllamaEmulator, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    unknown = cli("chat", "-m", "nope:1b", "hi")
    assert unknown.code == 1
    assert unknown.stderr.strip().count("\n") == 0 and "nope:1b" in unknown.stderr
    emulator.inject(Fault.MIDSTREAM_ERROR)
    broken = cli("chat", "-m", "llama3.1:8b", "hi")
    assert broken.code == 1 and "Ollama failed while answering" in broken.stderr
    monkeypatch.setenv("OLLAMA_HOST", unreachable_url())
    down = cli("chat", "-m", "llama3.1:8b", "hi")
    assert down.code == 1 and "cannot reach Ollama" in down.stderr
    assert "Traceback" not in unknown.stderr + broken.stderr + down.stderr
    spans = json.loads(cli("log", "--json", "--status", "error").stdout)
    assert [s["error_type"] for s in spans] == ["connection", "stream_error", "model_not_found"]


def test_bad_input_is_a_clear_error(cli, db: str, emulator: OllamaEmulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert "department name" in cli("chat", "--dept", "no spaces", "hi").stderr
    assert cli("chat", "--option", "novalue", "hi").code == 2
    assert "stdin was empty" in cli("chat", stdin="").stderr
    monkeypatch.setenv("OMETER_TIMEZONE", "Mars/Olympus")
    bad = cli("log")
    assert bad.code == 2 and bad.stderr.strip() == (
        "error: OMETER_TIMEZONE: 'Mars/Olympus' is not a known time zone; use an IANA name such as Europe/Berlin or UTC"
    )


def test_interactive_session_keeps_history(
    cli, db: str, emulator: OllamaEmulator, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    stdin = io.StringIO("first question\n\n/reset\nsecond one\nthird\n/exit\n")
    stdin.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", stdin)
    result = cli("chat", "-m", "llama3.1:8b")
    assert result.code == 0, result.stderr
    chats = [r.body for r in emulator.requests if r.path == "/api/chat"]
    assert [len(c["messages"]) for c in chats] == [1, 1, 3]
    assert chats[2]["messages"][0]["content"] == "second one"
    assert len(json.loads(cli("log", "--json").stdout)) == 3


def test_log_table_and_filters(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0
    assert "no spans yet" in cli("log").stdout
    cli("chat", "--dept", "sales", "-m", "llama3.1:8b", "a b c")
    cli("chat", "--dept", "support", "-m", "qwen2.5:7b", "a b c")
    table = cli("log", "--limit", "5").stdout
    assert "sales" in table and "support" in table and "* unpriced" in table
    only = json.loads(cli("log", "--json", "--dept", "support").stdout)
    assert [s["model"] for s in only] == ["qwen2.5:7b"]
    assert (
        json.loads(cli("log", "--json", "--model", "llama3.1:8b", "--limit", "1").stdout)[0][
            "department"
        ]
        == "sales"
    )
    keys = {
        "id",
        "started_at",
        "tenant",
        "department",
        "user",
        "model",
        "operation",
        "status",
        "error_type",
        "input_tokens",
        "output_tokens",
        "token_source",
        "cost",
        "currency",
    }
    assert keys <= set(only[0])
    assert isinstance(only[0]["cost"], str)


def test_pricing_commands(cli, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0  # a ledger with nothing in it (none: "no ledger at")
    assert "no price rules" in cli("pricing", "list").stdout
    assert cli(*PRICE_LLAMA).code == 0
    assert (
        cli(
            "pricing",
            "set",
            "qwen2.5:*",
            "--gpu-hour",
            "3.60",
            "--currency",
            "eur",
            "--from",
            "2026-11-01",
        ).code
        == 0
    )
    rules = json.loads(cli("pricing", "list", "--json").stdout)
    assert [
        (r["pattern"], r["input_per_1m"], r["gpu_hour"], r["currency"], r["effective_from"])
        for r in rules
    ] == [
        ("llama3.1:*", "1000", None, "USD", None),
        ("qwen2.5:*", None, "3.60", "EUR", "2026-11-01"),
    ]
    assert "llama3.1:*" in cli("pricing", "list").stdout
    assert "both --watts and --kwh-price" in cli("pricing", "set", "x", "--watts", "300").stderr
    assert "not a number" in cli("pricing", "set", "x", "--gpu-hour", "cheap").stderr
    assert "sets no price" in cli("pricing", "set", "x").stderr
    # Exponents are read, and prices are said back as plain decimals, never "1E+3".
    said = cli("pricing", "set", "e:*", "--input-per-1m", "1e3", "--fee-per-1m", "5E-7").stdout
    assert "input_per_1m 1000, fee_per_1m 0.0000005 USD" in said
    # ... and an amount refused is named as it was written, not as Decimal prints it ("1E+30").
    huge = cli("pricing", "set", "e:*", "--gpu-hour", "1e30").stderr
    assert "--gpu-hour 1e30 is more than the largest allowed" in huge
    assert cli("pricing", "rm", str(rules[0]["id"])).code == 0
    missing = cli("pricing", "rm", "999")
    assert missing.code == 1 and "no price rule with id 999" in missing.stderr
    toml = tmp_path / "p.toml"
    toml.write_text('[[rule]]\nmodel = "mistral:*"\nper_request = "0.01"\n')
    assert "imported 1 new rule" in cli("pricing", "import", str(toml)).stdout
    again = cli("pricing", "import", str(toml)).stdout
    assert "imported 0 new rule(s)" in again and "(1 already there)" in again
    toml.write_text("[[rule]]\nmodel = 3\n")
    assert cli("pricing", "import", str(toml)).code == 1


def test_report_sums_exactly_to_the_spans(
    cli, db: str, emulator: OllamaEmulator, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cli(*PRICE_LLAMA)
    cli("pricing", "set", "qwen2.5:*", "--gpu-hour", "3.60")
    for dept, model in [
        ("sales", "llama3.1:8b"),
        ("sales", "qwen2.5:7b"),
        ("support", "llama3.1:8b"),
        ("support", "mistral:7b"),
        ("sales", "llama3.1:8b"),
    ]:
        assert (
            cli(
                "chat", "--dept", dept, "--tenant", "acme", "-m", model, f"question for {dept}"
            ).code
            == 0
        )
    cli("chat", "--dept", "sales", "-m", "nope:1b", "x")
    spans = json.loads(cli("log", "--json", "--limit", "100").stdout)
    out = tmp_path / "nov.csv"
    assert (
        cli(
            "report",
            "--period",
            "month",
            "--by",
            "department,model",
            "--format",
            "csv",
            "--out",
            str(out),
        ).code
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == [
        "department",
        "model",
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "gpu_seconds",
        "cost",
        "currency",
    ]
    assert sum(int(r["requests"]) for r in rows) == len(spans) == 6
    assert sum(int(r["errors"]) for r in rows) == 1
    assert sum(Decimal(r["cost"]) for r in rows) == sum(Decimal(s["cost"]) for s in spans)
    assert sum(int(r["output_tokens"]) for r in rows) == sum(s["output_tokens"] for s in spans)
    gpu_ns = sum(
        (s["durations_ns"]["prompt_eval"] or 0) + (s["durations_ns"]["eval"] or 0) for s in spans
    )
    assert sum(Decimal(r["gpu_seconds"]) for r in rows) == Decimal(gpu_ns) / 10**9
    sales_llama = next(
        r for r in rows if r["department"] == "sales" and r["model"] == "llama3.1:8b"
    )
    assert sales_llama["requests"] == "2"
    as_json = json.loads(cli("report", "--by", "tenant", "--format", "json").stdout)
    assert as_json == [
        {
            "tenant": "acme",
            "requests": 5,
            "errors": 0,
            **{k: as_json[0][k] for k in ("input_tokens", "output_tokens", "gpu_seconds", "cost")},
            "currency": "USD",
        },
        {
            "tenant": "default",
            "requests": 1,
            "errors": 1,
            "input_tokens": 0,
            "output_tokens": 0,
            "gpu_seconds": "0E-9" if as_json[1]["gpu_seconds"] == "0E-9" else "0.000000000",
            "cost": "0.000000",
            "currency": "USD",
        },
    ]
    table = cli("report", "--by", "department,model").stdout
    assert "total" in table
    assert (
        "1 call(s) matched no price rule" in table
    )  # mistral has no rule; nope:1b consumed nothing
    assert cli("report", "--by", "day", "--format", "csv").code == 0


def test_report_options_are_validated(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert "is not one of" in cli("report", "--by", "colour").stderr
    assert "at most one of day, week, month" in cli("report", "--by", "day,month").stderr
    assert "not one of" in cli("report", "--period", "yesterday").stderr
    assert (
        "either --period or --since"
        in cli("report", "--period", "month", "--since", "2026-01-01").stderr
    )
    assert (
        "before --since" in cli("report", "--since", "2026-02-01", "--until", "2026-01-01").stderr
    )
    # --out names every format that writes a file: html does too, for report.
    table_out = cli("report", "--out", "x.txt")
    assert table_out.code == 2
    assert table_out.stderr == "error: --out needs --format csv, json or html\n"
    # Nothing to show is said in words, with no empty grid drawn around it (in a ledger that
    # is there: one that is not is an error, see test_chat_attacks).
    assert cli("db", "upgrade").code == 0
    for command, said in [
        (("report", "--period", "2026-10"), "spend 2026-10 (UTC)\nno calls in this period\n"),
        (("perf", "--period", "2026-10"), "perf 2026-10 (UTC)\nno calls in this period\n"),
        (("limit", "list"), "limits\nno limits\n"),
        (
            ("keys", "list"),
            "gateway keys\nno keys; create one with `ometer keys create --name NAME --dept D`\n",
        ),
    ]:
        assert cli(*command).stdout == said


@pytest.mark.parametrize(
    "args",
    [
        ("report", "--since", ""),
        ("report", "--since", "2026-11-01", "--until", ""),
        ("report", "--period", ""),
        ("report", "--period", "today", "--since", ""),
        ("perf", "--until", ""),
        ("perf", "--period", " "),
        ("db", "export", "--since", ""),
        ("db", "export", "--until", ""),
        ("reprice", "--since", "2026-11-01", "--until", ""),
    ],
)
def test_an_empty_date_or_period_is_refused_not_read_as_none_given(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """`--since "$START"` with START unset reported this month (and `db export` wrote every
    span): an empty value was taken as no option at all. It is a date nobody can read."""
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    cli("pricing", "set", "*", "--input-per-1m", "1")  # the ledger exists
    done = cli(*args)
    assert done.code != 0 and done.stdout == "", (done.code, done.stdout)
    message = done.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "''" in message or "' '" in message or "not both" in message, message


def test_db_commands(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'x' / 'ledger.db'}"
    assert cli("db", "path", "--db", url).stdout.strip() == str(tmp_path / "x" / "ledger.db")
    assert f"empty → {HEAD_REVISION}" in cli("db", "upgrade", "--db", url).stdout
    assert "up to date" in cli("db", "upgrade", "--db", url).stdout
    default = cli("db", "path").stdout.strip()
    assert default.endswith("ollama-meter/ledger.db") and str(tmp_path) in default


def test_reprice_command(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    cli("chat", "-m", "llama3.1:8b", "one two three")
    cli(*PRICE_LLAMA)
    spans = json.loads(cli("log", "--json").stdout)
    assert spans[0]["unpriced"] is True
    result = cli("reprice", "--since", spans[0]["started_at"][:10])
    assert result.code == 0, result.stderr
    new = json.loads(cli("log", "--json").stdout)[0]
    assert "examined 1 span(s)" in result.stdout and "1 changed" in result.stdout
    assert f"(+{new['cost']})" in result.stdout and "1 newly priced" in result.stdout
    assert "is not a date" in cli("reprice", "--since", "last week").stderr


def test_version_and_help(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("--version").stdout.startswith("ometer ")
    for command in (
        ["chat"],
        ["log"],
        ["report"],
        ["pricing", "set"],
        ["reprice"],
        ["db", "upgrade"],
        ["demo"],
    ):
        result = cli(*command, "--help")
        assert result.code == 0 and "Usage" in result.stdout, command


def test_every_bracketed_word_in_a_commands_help_is_shown_as_written(cli) -> None:  # type: ignore[no-untyped-def]
    """Help is rich markup, where ``[rule]`` is a style: ``ometer pricing import --help`` said
    'TOML file with [] tables', the one thing a user needs to write the file gone."""
    import re

    import typer

    from ollama_meter.cli import app

    bracketed: list[tuple[list[str], str]] = []

    def walk(path: list[str], command) -> None:  # type: ignore[no-untyped-def]
        for text in [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]:
            bracketed.extend((path, word) for word in re.findall(r"\S*\[[^\]\s]*\]\S*", text))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    assert [word for path, word in bracketed if path == ["pricing", "import"]] != []
    for path, written in bracketed:
        word = written.replace("\\[", "[")  # a bracket escaped in the markup is meant as one
        shown = cli(*path, "--help")
        assert shown.code == 0 and word in shown.stdout, (path, word, shown.stdout)


def test_a_report_that_sums_same_named_departments_or_users_of_several_tenants_says_so(
    cli, db: str
) -> None:  # type: ignore[no-untyped-def]
    """``report`` groups by department alone unless asked: two tenants' ``research`` came out
    as one row, summed, with nothing to say so. The sum stays (it is what was asked), and a
    note on stderr names what was summed and how to see each tenant's."""
    from datetime import UTC, datetime

    from ollama_meter.ledger import Ledger
    from ollama_meter.records import make_storable
    from tests.factories import make_span

    at = datetime.now(UTC).replace(microsecond=0)
    ledger = Ledger(db)
    ledger.record(
        [
            make_storable(make_span(started_at=at, tenant=t, department=d, user=u, cost_total=c))
            for t, d, u, c in [
                ("acme", "research", "alice", 1_250_000),
                ("globex", "research", "alice", 500_000),
                ("globex", "research", "bob", 250_000),
                ("acme", "sales", "carol", 100_000),
            ]
        ]
    )
    ledger.dispose()
    merged = cli("report", "--period", "today", "--by", "department,user", "--format", "csv")
    assert merged.code == 0, merged.stderr
    rows = {
        (r["department"], r["user"]): r["cost"] for r in csv.DictReader(io.StringIO(merged.stdout))
    }
    assert rows[("research", "alice")] == "1.750000"
    assert merged.stderr.splitlines() == [
        "note: department 'research' and user 'alice' are in 2 tenants (acme, globex), summed "
        "in one row: add tenant to --by (--by tenant,department,user) to see each"
    ]
    by_department = cli("report", "--period", "today", "--format", "json")
    assert by_department.stderr.splitlines() == [
        "note: department 'research' is in 2 tenants (acme, globex), summed in one row: add "
        "tenant to --by (--by tenant,department) to see each"
    ]
    ledger = Ledger(db)
    ledger.record(
        [make_storable(make_span(started_at=at, tenant=t, department="ops")) for t in "abcd"]
    )
    ledger.dispose()
    several = cli("report", "--period", "today", "--by", "department,model", "--format", "csv")
    assert several.stderr.splitlines() == [
        "note: 2 rows sum several tenants (department 'ops' in a, b, c, d; department 'research' "
        "in acme, globex): add tenant to --by (--by tenant,department,model) to see each"
    ]
    # The ops calls name no user in four tenants: no user is nobody's name, so it is not "user ''".
    by_user = cli("report", "--period", "today", "--by", "user", "--format", "csv")
    assert by_user.stderr.splitlines() == [
        "note: user 'alice' is in 2 tenants (acme, globex), summed in one row: add tenant to "
        "--by (--by tenant,user) to see each"
    ]
    both = cli("report", "--period", "today", "--by", "department,user", "--format", "csv")
    assert "department 'ops' in a, b, c, d;" in both.stderr and "''" not in both.stderr
    for apart in (("--by", "tenant,department,user"), ("--tenant", "globex"), ("--by", "model")):
        quiet = cli("report", "--period", "today", "--format", "csv", *apart)
        assert quiet.code == 0 and quiet.stderr == "", (apart, quiet.stderr)
