"""Processes that upgrade one older ledger at the same moment: one migrates, the others find
the work done; every span and rollup comes through exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ollama_meter.ledger import HEAD_REVISION, Ledger, current_revision
from tests._templates import LedgerTemplates
from tests.factories import OFFICE_NOW, office_spans
from tests.ledger.test_ledger import ROOT, _everything, downgrade

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
    db_url: str,
    revision: str,
    tmp_path: Path,
    templates: LedgerTemplates,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
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
    monkeypatch.setenv("OMETER_TIMEZONE", env["OMETER_TIMEZONE"])
    after = cli(*report)  # the upgraded ledger's report, read here: the race was the processes'
    assert after.code == 0, after.stderr
    assert results[1][1] == results[3][1] == after.stdout
    assert after.stdout.count("\n") > 2


_OLD_WRITER = """
import json, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from ollama_meter.ledger import HEAD_REVISION, Ledger
from tests.factories import make_span
url, spool, writing, stop = sys.argv[1:5]
ledger = Ledger(url, spool_dir=Path(spool))
assert HEAD_REVISION == "0016", HEAD_REVISION
start, written, after = datetime(2026, 11, 10, 12, tzinfo=UTC), [], 0
for batch in range(2000):
    spans = [make_span(started_at=start + timedelta(minutes=batch, seconds=i),
                       department=f"d{i % 3}", cost_total=1_000 * batch + i) for i in range(5)]
    stored = ledger.record(spans)
    written += [[s.id, s.cost_total, str(stored[s.id])] for s in spans]
    Path(writing).touch()
    after += Path(stop).exists()
    if after > 5:
        break
    time.sleep(0.01)
ledger.dispose()
print(json.dumps(written))
"""
"""A gateway of the release whose head was 0016, writing batches until told to stop."""

_RELEASE_0016 = "06cc76e^"
"""The commit before 0017 was added: the last ometer whose schema was 0016."""


def _need_release_history() -> None:
    """Skip in a shallow clone (CI's ``--depth 1``) that lacks the release; in a whole
    clone a missing release fails the test, never skips it."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{_RELEASE_0016}{{commit}}"],
        check=False, capture_output=True,
    )  # fmt: skip
    shallow = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
        check=False, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if found.returncode and shallow == "true":
        pytest.skip(f"a shallow clone has no {_RELEASE_0016} to run: fetch its history")


@pytest.mark.slow
def test_a_0016_gateway_writing_while_the_ledger_is_upgraded_loses_and_doubles_no_span(
    cli: Any, db_url: str, tmp_path: Path
) -> None:
    """The released 0016 code keeps writing batches while this ometer upgrades the ledger
    under it: each of its spans ends in the ledger or the spool once, and after the spool is
    drained the ledger holds each once, with rollups exactly what a rebuild makes."""
    _need_release_history()
    old = tmp_path / "release"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", _RELEASE_0016, "ollama_meter", "migrations",
         "tests/factories.py"],
        capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    (old / "ollama_meter" / "_migrations").symlink_to("../migrations")
    ledger = Ledger(db_url)
    downgrade(ledger, "0016")
    ledger.dispose()
    spool, writing, stop = tmp_path / "spool", tmp_path / "writing", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _OLD_WRITER, db_url, str(spool), str(writing), str(stop)],
        cwd=old,
        env={**os.environ, "PYTHONPATH": str(old)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not writing.exists():
        assert writer.poll() is None, writer.communicate()
        time.sleep(0.01)
    result = cli("db", "upgrade", "--db", db_url)
    assert result.code == 0 and "0016 → " + HEAD_REVISION in result.stdout, result.stderr
    stop.touch()
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    written = json.loads(out)
    assert {where for _, _, where in written} <= {"committed", "spooled"}, err
    ledger = Ledger(db_url, spool_dir=spool)  # records what the old one spooled
    assert ledger.spool.pending() == [] and ledger.spool.quarantined() == []
    with ledger.read() as conn:
        costs = dict(conn.execute(text("SELECT id, cost_total FROM spans")).all())
    assert costs == {span_id: cost for span_id, cost, _ in written}
    kept = _everything(ledger)
    ledger.dispose()
    assert cli("db", "rollup", "--db", db_url).code == 0
    assert _everything(Ledger(db_url)) == kept
