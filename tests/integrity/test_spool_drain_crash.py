"""A process killed while it drains the spool, and drains racing it: every span once, exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import SpanRecord
from tests.factories import make_span

FILES, PER_FILE = 300, 4

_DRAIN = """
import sys
from pathlib import Path
from ollama_meter.ledger import Ledger
Ledger(sys.argv[1], spool_dir=Path(sys.argv[2]))  # opening drains the spool
"""


def _drain(url: str, spool: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _DRAIN, url, str(spool)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_drain_killed_midway_then_raced_by_three_records_each_span_once(
    db_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ledger = Ledger(db_url, spool_dir=spool)
    spans: list[SpanRecord] = []
    # The kill is timed by watching the spool: a busy machine can hold this process off
    # until the drain has ended, so a kill that came too late is tried again, on more spans.
    for _ in range(5):
        for _ in range(FILES):
            cost = 1_000 + len(spans)  # each span's own: the sums below are exact
            batch = [make_span(cost_tokens=cost + i, cost_total=cost + i) for i in range(PER_FILE)]
            ledger.spool.put(batch)
            spans.extend(batch)
        child = _drain(db_url, spool)
        deadline = time.monotonic() + 60
        while len(ledger.spool.pending()) > FILES * 3 // 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        left = len(ledger.spool.pending())
        assert left < FILES, "the drain never began"
        if left:
            break
    assert 0 < left < FILES, "the kill landed mid-drain"
    racers = [_drain(db_url, spool) for _ in range(3)]
    assert [r.wait(120) for r in racers] == [0, 0, 0]
    assert ledger.spool.pending() == [] and ledger.spool.quarantined() == []
    stored = ledger.latest(SpanFilter(), len(spans) + 10)
    assert sorted(s.id for s in stored) == sorted(s.id for s in spans)
    # The rollups count each span once too: spend read from them is exact.
    (total,) = ledger.spend(SpanFilter())
    assert (total.cost, total.requests) == (sum(s.cost_total for s in spans), len(spans))
