"""`db prune`, `db backup` and `db rollup` while other processes write spans: every call the
writers were told was recorded is counted once, and the rollups end as a rebuild gives them."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, backup, prune, rebuild
from ollama_meter.ledger._cells import Grain
from ollama_meter.ledger._rollup import ROLLUPS
from ollama_meter.records import Stored
from tests.factories import make_span
from tests.ledger.test_transfer import NOW, _tables


def _write(url: str, worker: int, told: Any) -> None:
    """Batches of calls over the last 40 days, old and new mixed (a spool drained late)."""
    ledger = Ledger(url)
    counts = dict.fromkeys(Stored, 0)
    for batch in range(30):
        spans = [
            make_span(
                id=f"01K{worker:03d}{batch:04d}{n:016d}",
                started_at=NOW - timedelta(days=(batch * 7 + n * 3) % 40, minutes=worker),
                ended_at=NOW - timedelta(days=(batch * 7 + n * 3) % 40, minutes=worker - 1),
                output_tokens=worker * 100 + n,
            )
            for n in range(5)
        ]
        for stored in ledger.record(spans).values():
            counts[stored] += 1
    told.put({str(k): v for k, v in counts.items()})
    ledger.dispose()


def _prune_all_along(url: str, done: Any) -> None:
    ledger = Ledger(url)
    keep = 30
    while not done.is_set():
        try:
            prune(ledger, keep, now=NOW, chunk=3)
        except LedgerError as exc:  # a rebuild under way: a gateway's tries again later
            if "being rebuilt" not in str(exc):
                raise
            continue
        keep = max(5, keep - 1)
    ledger.dispose()


def _back_up_all_along(url: str, folder: str, done: Any) -> None:
    """Copies to ``copy0.db`` ... ``copy9.db``, each replaced by a later one (not told on a
    queue: a process exits only once what it put there was read)."""
    ledger = Ledger(url)
    n = 0
    while not done.is_set() or not n:
        backup(ledger, Path(folder) / f"copy{n % 10}.db")
        n += 1
    ledger.dispose()


def _calls(ledger: Ledger) -> int:
    with ledger.read() as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(ROLLUPS.c.requests), 0)).where(
                    ROLLUPS.c.grain == int(Grain.MONTH), ROLLUPS.c.user != "*"
                )
            ).scalar_one()
        )


@pytest.mark.slow
def test_prune_and_backup_while_processes_write_count_each_told_call_once(
    db_url: str, tmp_path: Path
) -> None:
    Ledger(db_url).dispose()
    context = multiprocessing.get_context("spawn")
    done, told = context.Event(), context.Queue()
    writers = [context.Process(target=_write, args=(db_url, n, told)) for n in range(2)]
    others = [context.Process(target=_prune_all_along, args=(db_url, done))]
    if db_url.startswith("sqlite"):
        others.append(
            context.Process(target=_back_up_all_along, args=(db_url, str(tmp_path), done))
        )
    else:
        others.append(context.Process(target=_rebuild_all_along, args=(db_url, done)))
    for process in [*writers, *others]:
        process.start()
    outcomes = [told.get(timeout=300) for _ in writers]
    for process in writers:
        process.join(120)
    done.set()
    for process in others:
        process.join(300)
    assert [p.exitcode for p in [*writers, *others]] == [0] * 4
    committed = sum(o["committed"] for o in outcomes)
    ledger = Ledger(db_url)
    assert _calls(ledger) == committed, outcomes
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    for made in sorted(tmp_path.glob("copy*.db")):
        copy = Ledger(f"sqlite:///{made}")
        with copy.read() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        kept = _tables(copy)
        rebuild(copy.write, copy.read)
        assert _tables(copy) == kept
        copy.dispose()


def _rebuild_all_along(url: str, done: Any) -> None:
    ledger = Ledger(url)
    while not done.is_set():
        rebuild(ledger.write, ledger.read)
    ledger.dispose()
