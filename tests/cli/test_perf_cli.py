"""``ometer perf`` through the real entry point, on spans the emulator's calls produced."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from ollama_meter.cli.perf import render_table
from ollama_meter.ledger import Ledger
from ollama_meter.periods import Window
from ollama_meter.reports import PERF_METRICS, PerfReport
from ollama_meter.testing import DEFAULT_MODELS, OllamaEmulator
from tests.factories import make_span

HEADER = (
    "model,department,requests,errors,error_rate,latency_p50_ms,latency_p95_ms,latency_p99_ms,"
    "ttft_p50_ms,ttft_p95_ms,tokens_per_s,cold_loads,cold_load_s,queue_p50_ms,queue_p95_ms,"
    "gateway_queue_p50_ms,gateway_queue_p95_ms"
)


COLD_LOAD_NS = 120_000_000


@pytest.fixture
def slow_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[OllamaEmulator]:
    """The emulator, its models loading in 120 ms when cold: perf counts a load of 100 ms or
    more as cold, and the emulator spends every time it reports (its own load: 3 ms)."""
    models = tuple(replace(m, load_ns=COLD_LOAD_NS) for m in DEFAULT_MODELS)
    with OllamaEmulator(models=models) as emulator:
        monkeypatch.setenv("OLLAMA_HOST", emulator.url)
        yield emulator


@pytest.fixture
def calls(cli, db: str, slow_loads: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    """Two llama calls for sales (the first loads the model: 120 ms), one qwen call for support."""
    for dept, model in (
        ("sales", "llama3.1:8b"),
        ("sales", "llama3.1:8b"),
        ("support", "qwen2.5:7b"),
    ):
        result = cli("chat", "--dept", dept, "-m", model, "hi")
        assert result.code == 0, result.stderr


def test_csv_header_and_emulated_figures(cli, calls: None) -> None:  # type: ignore[no-untyped-def]
    result = cli("perf", "--format", "csv")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0] == HEADER
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["model"], r["department"], r["requests"]) for r in rows] == [
        ("llama3.1:8b", "sales", "2"),
        ("qwen2.5:7b", "support", "1"),
    ]
    llama = rows[0]
    # The emulator's durations are deterministic: 50 µs a token, 1.25 µs overhead, cold 120 ms.
    assert (llama["errors"], llama["error_rate"], llama["tokens_per_s"]) == (
        "0",
        "0.0000",
        "20000.0",
    )
    assert (llama["cold_loads"], llama["cold_load_s"]) == ("1", "0.120")
    assert (llama["queue_p50_ms"], llama["queue_p95_ms"]) == ("0.00125", "0.00125")
    assert float(llama["latency_p99_ms"]) >= 120  # the load was spent, not only reported
    assert all(llama[c] for c in ("latency_p50_ms", "latency_p99_ms", "ttft_p95_ms"))


def test_json_keys_and_filters(cli, calls: None) -> None:  # type: ignore[no-untyped-def]
    result = cli("perf", "--format", "json", "--by", "department", "--dept", "support")
    assert result.code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert list(row) == ["department", *HEADER.split(",")[2:]]
    assert (row["department"], row["requests"], row["cold_loads"]) == ("support", 1, 1)
    assert isinstance(row["latency_p95_ms"], str) and isinstance(row["error_rate"], str)
    assert json.loads(cli("perf", "-f", "json", "--model", "nope:1b").stdout) == []


def test_table_renders_and_marks_worst(cli, calls: None) -> None:  # type: ignore[no-untyped-def]
    result = cli("perf", "--by", "model")
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "llama3.1:8b" in out and "qwen2.5:7b" in out and "lat p95" in out and "tok/s" in out
    assert "cold = model load ≥ 100 ms" in out and "highest lat p95" in out
    assert "no calls in this period" in cli("perf", "--period", "2020-01").stdout


def test_worst_cells_are_bold_red() -> None:
    report = PerfReport(
        window=Window(
            datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), "2026-11"
        ),
        by=["model"],
        rows=[
            {"model": "fast", **dict.fromkeys(PERF_METRICS), "latency_p95_ms": Decimal("10.000")},
            {"model": "slow", **dict.fromkeys(PERF_METRICS), "latency_p95_ms": Decimal("99.000")},
        ],
    )
    console = Console(record=True, force_terminal=True, color_system="standard", width=200)
    console.print(render_table(report, "UTC"))
    lines = console.export_text(styles=True).splitlines()
    slow = next(line for line in lines if "slow" in line)
    fast = next(line for line in lines if "fast" in line)
    assert "\x1b[1;31m99.0" in slow and "\x1b[1;31m" not in fast
    assert " - " in fast  # None renders as a dash


def test_by_is_validated(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    bad = cli("perf", "--by", "model,day")
    assert bad.code == 2
    assert bad.stderr.strip() == "error: --by day is not one of: tenant, department, user, model"
    both = cli("perf", "--period", "today", "--since", "2026-11-01")
    assert both.code == 2 and "either --period or --since/--until" in both.stderr


def test_out_writes_the_file(cli, calls: None, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "perf.csv"
    result = cli("perf", "-f", "csv", "--out", str(target))
    assert result.code == 0, result.stderr
    assert result.stdout == "" and f"wrote {target}" in result.stderr
    assert target.read_text(encoding="utf-8").splitlines()[0] == HEADER
    table_out = cli("perf", "--out", str(tmp_path / "x.txt"))
    assert table_out.code == 2 and "--out needs --format csv or json" in table_out.stderr


def test_table_cells_never_round_a_bin_edge_across_the_true_value() -> None:
    """1.15 tok/s is a speed bin's lower edge (the true median is at least that): the table
    must not say 1.2; a 2.2 µs queue must not read 0.0 ms. Whole tenths stay one decimal."""
    report = PerfReport(
        window=Window(
            datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), "2026-11"
        ),
        by=["model"],
        rows=[
            {
                "model": "slow",
                **dict.fromkeys(PERF_METRICS),
                "tokens_per_s": Decimal("1.15"),
                "queue_p50_ms": Decimal("0.0022"),
                "latency_p50_ms": Decimal("1500.000"),
            }
        ],
    )
    console = Console(record=True, width=300)
    console.print(render_table(report, "UTC"))
    (line,) = (line for line in console.export_text().splitlines() if "slow" in line)
    assert [cell.strip() for cell in line.split("│")[1:-1]] == [
        "slow", "-", "-", "-", "1,500.0", "-", "-", "-", "-", "1.15", "-", "-", "0.0022", "-",
        "-", "-",
    ]  # fmt: skip


def test_a_department_two_tenants_share_is_said_to_be_summed(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """As report says it: perf by department merged acme's and globex's ``research`` into one
    row's percentiles and error rate without a word (the default --by model,department too)."""
    at = datetime.now(UTC).replace(microsecond=0)
    ledger = Ledger(db)
    ledger.record(
        [
            make_span(started_at=at, tenant=tenant, department="research", latency_ns=latency)
            for tenant, latency in [("acme", 10**6), ("globex", 9 * 10**9)]
        ]
    )
    ledger.dispose()
    note = (
        "note: department 'research' is in 2 tenants (acme, globex), summed in one row: add "
        "tenant to --by (--by tenant,{}) to see each"
    )
    for by in ("department", "model,department"):
        merged = cli("perf", "--period", "today", "--by", by, "--format", "csv")
        assert merged.code == 0, merged.stderr
        assert merged.stderr.splitlines() == [note.format(by)]
    for apart in (("--by", "tenant,department"), ("--tenant", "acme"), ("--by", "model")):
        quiet = cli("perf", "--period", "today", "--format", "csv", *apart)
        assert quiet.code == 0 and quiet.stderr == "", (apart, quiet.stderr)
