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
