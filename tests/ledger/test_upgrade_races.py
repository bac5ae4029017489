"""Processes that upgrade one older ledger at the same moment: one migrates, the others find
the work done; every span and rollup comes through exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from ollama_meter.ledger import HEAD_REVISION, Ledger, current_revision
from tests._templates import LedgerTemplates
from tests.factories import OFFICE_NOW, office_spans
from tests.ledger.test_ledger import _everything, downgrade

_GATED = """
import os, sys, time
from ollama_meter.__main__ import main
while not os.path.exists(sys.argv[1]):
    time.sleep(0.002)
sys.argv = ["ometer", *sys.argv[2:]]
main()
"""
"""``ometer ARGS`` once the gate file exists: the processes start together, imports done."""


@pytest.mark.slow
@pytest.mark.parametrize("revision", ["0005", "0011"])
def test_four_processes_opening_an_older_ledger_at_once_migrate_it_once(
    db_url: str, revision: str, tmp_path: Path, templates: LedgerTemplates
) -> None:
    """Two ``ometer db upgrade`` and two reports started at one moment on a ledger at
    ``revision`` (0005: SQLite's spans are copied and rollups built; 0011: a rebuild is asked
    for): all four succeed, the reports say what the ledger holds, and the ledger ends at the
    head with every span and rollup row it had before it was taken down."""
    spans = office_spans(OFFICE_NOW + timedelta(days=20))
    if revision < "0008":  # nothing a downgrade drops
        spans = [replace(s, queue_ns=None) for s in spans]
    zone = "Europe/Berlin" if revision >= "0006" else None  # before 0006 cells were UTC's

    def recorded(url: str) -> Ledger:
        made = Ledger(url, zone=zone)
        made.record(spans)
        return made

    templates.copy(db_url, f"office, 20 days on, zone {zone}, races", recorded)
    ledger = Ledger(db_url, zone=zone)
    before = _everything(ledger)
    report = ["report", "--period", "2026-11", "--format", "csv", "--db", db_url]
    downgrade(ledger, revision)
    ledger.dispose()
    gate = tmp_path / "go"
    env = {**os.environ, "OMETER_DB_URL": db_url, "OMETER_TIMEZONE": zone or "UTC"}
    commands = [["db", "upgrade", "--db", db_url], report] * 2
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _GATED, str(gate), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    gate.touch()
    results = [(p.wait(120), *p.communicate()) for p in running]
    for code, _, err in results:
        assert code == 0 and "Traceback" not in err, err
    ledger = Ledger(db_url)
    assert current_revision(ledger.engine) == HEAD_REVISION
    assert _everything(ledger) == before
    with ledger.read() as conn:
        meta = dict(conn.execute(text("SELECT key, value FROM ledger_meta")).all())
    assert meta.get("rollups") == "current" and "rebuilding" not in meta
    ledger.dispose()
    after = subprocess.run(
        [sys.executable, "-m", "ollama_meter", *report],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert results[1][1] == results[3][1] == after.stdout
    assert after.stdout.count("\n") > 2
