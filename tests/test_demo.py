"""`ometer demo`: a few hundred realistic calls, no Ollama needed, never the real ledger."""

from __future__ import annotations

import json
from pathlib import Path

from ollama_meter.config import default_data_dir


def test_demo_fills_its_own_ledger_and_prints_the_report(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("demo", "--calls", "120")
    assert result.code == 0, result.stderr
    assert "sent 120 calls" in result.stderr and "failed (on purpose)" in result.stderr
    assert (
        "spend" in result.stdout and "acme" in result.stdout and "ometer log --db" in result.stdout
    )
    demo_db = default_data_dir() / "demo.db"
    assert demo_db.exists() and not (default_data_dir() / "ledger.db").exists()
    spans = json.loads(
        cli("log", "--db", f"sqlite:///{demo_db}", "--json", "--limit", "1000").stdout
    )
    assert len(spans) == 120
    assert {s["tenant"] for s in spans} == {"acme", "globex"}
    assert {s["status"] for s in spans} == {"ok", "error"}
    assert {s["error_type"] for s in spans} >= {"model_not_found", "stream_error", "upstream_5xx"}
    assert len({s["started_at"][:10] for s in spans}) > 15  # spread over the month
    assert any(not s["stream"] for s in spans) and any(s["stream"] for s in spans)
    assert all(not s["unpriced"] for s in spans if s["status"] == "ok")
    # a second run starts over instead of piling up
    assert cli("demo", "--calls", "10").code == 0
    assert (
        len(
            json.loads(
                cli("log", "--db", f"sqlite:///{demo_db}", "--json", "--limit", "1000").stdout
            )
        )
        == 10
    )


def test_demo_into_a_given_ledger(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    assert cli("demo", "--calls", "5", "--db", url).code == 0
    assert len(json.loads(cli("log", "--db", url, "--json").stdout)) == 5
    # a second run adds to it: it is the demo's
    assert cli("demo", "--calls", "5", "--db", url).code == 0
    assert len(json.loads(cli("log", "--db", url, "--json").stdout)) == 10


def test_demo_never_fills_a_ledger_in_use(cli, emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``ometer demo --db`` pointed at a real ledger added its price rules there (one of them
    then priced the real llama3.1 calls, a tie it won as the newer rule) and charged its
    fake calls to the real budgets of acme/sales."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert cli("pricing", "set", "llama3.1:*", "--input-per-1m", "1000", "--db", url).code == 0
    assert cli("budget", "set", "sales", "--tenant", "acme", "--daily", "5", "--db", url).code == 0
    assert cli("chat", "-m", "llama3.1:8b", "hi", "--db", url).code == 0
    before = [cli(*what, "--json", "--db", url).stdout for what in (["pricing", "list"], ["log"])]
    done = cli("demo", "--calls", "5", "--db", url)
    assert done.code == 2
    assert done.stderr.splitlines() == [
        f"error: {tmp_path / 'ledger.db'} is a ledger in use (price rules, budgets or "
        "calls of its own); ometer demo fills only a new ledger or one it made: leave out "
        "--db for the separate demo ledger"
    ]
    after = [cli(*what, "--json", "--db", url).stdout for what in (["pricing", "list"], ["log"])]
    assert after == before


def test_demo_keeps_the_installs_budgets_prices_alerts_and_exporters_out(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch
) -> None:
    """An admin who tries the demo on the machine ometer already runs on has its settings in
    the environment: ``DEPARTMENT_BUDGETS`` was seeded into the demo ledger and refused the
    demo's calls (exit 3 halfway), and the rules of ``OMETER_PRICING_FILE`` priced them. Its
    alert webhook would have been told of the fake spend, and its OTLP collector, Langfuse
    and Traceloop sent 300 fake spans: the demo takes nothing of an install but the ledger's
    place, zone and currency."""
    prices = tmp_path / "prices.toml"
    prices.write_text('[[rule]]\nmodel = "*"\ninput_per_1m = 5000\n', encoding="utf-8")
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"sales": {"daily": 0.000001}}')
    monkeypatch.setenv("OMETER_PRICING_FILE", str(prices))
    monkeypatch.setenv("OMETER_CURRENCY", "EUR")
    result = cli("demo", "--calls", "40")
    assert result.code == 0, result.stderr
    for name in ("DEPARTMENT_BUDGETS", "OMETER_PRICING_FILE"):  # or the reading syncs them in
        monkeypatch.delenv(name)
    url = f"sqlite:///{default_data_dir() / 'demo.db'}"
    assert json.loads(cli("budget", "list", "--json", "--db", url).stdout) == []
    rules = json.loads(cli("pricing", "list", "--json", "--db", url).stdout)
    assert [(r["pattern"], r["currency"], r["source"]) for r in rules] == [
        ("llama3.1:*", "EUR", "demo"),
        ("mistral:*", "EUR", "demo"),
        ("qwen2.5:*", "EUR", "demo"),
    ]


def test_demo_settings_are_the_defaults_but_for_place_zone_and_currency(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ollama_meter.config import Settings, load_settings
    from ollama_meter.demo import KEPT_SETTINGS, demo_settings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    monkeypatch.setenv("LANGFUSE_HOST", "https://langfuse.example")
    monkeypatch.setenv("TRACELOOP_API_KEY", "tl-1")
    monkeypatch.setenv("OMETER_ALERT_WEBHOOK_URL", "https://hooks.example/T1")
    monkeypatch.setenv("OMETER_SMTP_HOST", "smtp.example")
    monkeypatch.setenv("OMETER_ALERT_EMAIL_TO", "it@example.com")
    monkeypatch.setenv("OMETER_KEEP_DAYS", "3")
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "1")
    monkeypatch.setenv("OMETER_TIMEZONE", "Pacific/Chatham")
    mine = load_settings(db_url="sqlite:////tmp/demo-x.db")
    demo = demo_settings(mine, "http://127.0.0.1:1")
    assert (demo.ollama_host, demo.retry_backoff) == ("http://127.0.0.1:1", 0.0)
    assert not demo.telemetry_configured
    for name, field in Settings.model_fields.items():
        if name in {"ollama_host", "retry_backoff"}:
            continue
        expected = (
            getattr(mine, name)
            if name in KEPT_SETTINGS
            else field.get_default(call_default_factory=True)
        )
        assert getattr(demo, name) == expected, name
    assert (demo.timezone, demo.db_url) == ("Pacific/Chatham", "sqlite:////tmp/demo-x.db")


def test_a_first_run_warns_of_nothing(cli) -> None:  # type: ignore[no-untyped-def]
    """The first command on a new machine creates ometer's own data folder: a WARNING line
    about it (meant for a ledger URL naming a folder that is not there) was the first thing
    a new user read, before the demo had said anything."""
    assert not default_data_dir().exists()
    demo = cli("demo", "--calls", "3")
    assert demo.code == 0 and default_data_dir().is_dir()
    assert [line for line in demo.stderr.splitlines() if "created the folder" in line] == []


def test_the_demos_next_commands_run_as_the_demo_was_run(tmp_path: Path) -> None:
    """The README's first command runs `.venv/bin/ometer demo` with no venv active: the demo's
    "explore the demo ledger: ometer log ..." then named a program not on PATH."""
    from ollama_meter.cli.demo import program_name

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "ometer"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert program_name(".venv/bin/ometer", path="/usr/bin", cwd=tmp_path) == ".venv/bin/ometer"
    assert program_name(str(script), path=f"/usr/bin:{venv_bin}", cwd=tmp_path) == "ometer"
    assert program_name("/some where/ometer", path="", cwd=tmp_path) == "'/some where/ometer'"
    # Run any other way (python -m ollama_meter, a test runner): the name to type is ometer.
    assert program_name("-m", path="", cwd=tmp_path) == "ometer"
