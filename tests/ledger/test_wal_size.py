"""A SQLite ledger's WAL on disk: SQLite reuses it and never shrinks it on its own, so one a
prune or an import grew beside a long read (an export, a backup) kept that size for as
long as any process, a gateway for months, had the ledger open."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ollama_meter.ledger import Ledger
from ollama_meter.ledger.models import SPANS
from tests.factories import make_span

_KEPT = 64 * 1024


def test_a_prune_beside_a_long_read_says_where_its_space_is_and_gets_it_back_after(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prune said `0.0 MB back to the disk (6.7 MB → 14.7 MB)`, and the 8 MB of deletes
    stayed in the WAL while the gateway ran. It says where the space is and why; once the
    read is done, the gateway's writes bring the WAL back to the size ometer keeps."""
    monkeypatch.setattr("ollama_meter.ledger._engine.WAL_KEPT_BYTES", _KEPT, raising=False)
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    wal = Path(f"{path}-wal")
    gateway = Ledger(url)  # open all along, as a gateway's is
    now = datetime.now(UTC)
    gateway.record([make_span(started_at=now - timedelta(days=40, seconds=n)) for n in range(8000)])
    gateway.record([make_span(started_at=now - timedelta(minutes=n)) for n in range(5)])
    reader = Ledger(url)
    with reader.read() as conn:  # an export's snapshot, from before the prune
        assert conn.execute(select(func.count()).select_from(SPANS)).scalar_one() == 8005
        done = cli("db", "prune", "--keep-days", "30", "--db", url)
        assert done.code == 0 and done.stdout.startswith("removed 8,000 span(s)"), done
        held = re.fullmatch(
            rf"the ledger's WAL \({re.escape(str(path))}-wal\) holds ([\d.]+) MB of it while "
            r"another process reads the ledger as it was before the prune \(an export, a "
            r"backup\): the space goes back to the disk at the first write after that read ends\n",
            done.stderr,
        )
        assert held is not None, done.stderr
        assert 1 < float(held[1]) <= wal.stat().st_size / 1e6 + 0.05
    for _ in range(3):  # the first copies the WAL back, a later one starts it again, cut
        gateway.record([make_span(started_at=datetime.now(UTC))])
    assert wal.stat().st_size < 2 * _KEPT  # cut to _KEPT, and the writes after it
    assert gateway.count() == 8
    reader.dispose()
    gateway.dispose()
