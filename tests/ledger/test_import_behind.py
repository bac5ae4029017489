"""An import writes a batch in a thread of its own while it reads the next batch's lines, and
makes a batch's rows before its transaction, in the zone the ledger had at the last one."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.ledger import Ledger, import_lines
from ollama_meter.ledger._jsonl import export_line
from ollama_meter.ledger._rollup import RollupDelta
from tests.ledger.test_transfer import _spans, _tables


def test_the_next_batch_is_read_while_one_waits_for_the_ledger(tmp_path: Path) -> None:
    """The second batch's lines are read while the first waits for a lock another
    connection holds: read one batch after another, the import waited for the lock until
    OMETER_LEDGER_WAIT ran out, and failed."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", wait=2)
    ledger.count()
    spans = _spans(6)
    blocker = sqlite3.connect(path, isolation_level=None)
    read_meanwhile: list[int] = []

    def lines() -> Iterator[bytes]:
        yield export_line(spans[0])
        blocker.execute("BEGIN IMMEDIATE")  # the first batch's write waits for it
        yield export_line(spans[1])
        read_meanwhile.append(blocker.execute("SELECT count(*) FROM spans").fetchone()[0])
        blocker.execute("ROLLBACK")
        yield from map(export_line, spans[2:])

    summary = import_lines(ledger, lines(), batch=2)
    assert read_meanwhile == [0]
    assert (summary.read, summary.added) == (6, 6) and ledger.count() == 6
    blocker.close()
    ledger.dispose()


def test_rows_made_in_another_zone_are_made_again_in_the_ledgers(tmp_path: Path) -> None:
    """A batch's rows are made before its transaction, in the zone the last batch read: a
    zone changed meanwhile (``ometer db rollup --zone``) has them made again in the new one."""
    spans = _spans(300)
    written = []
    for made_in in (None, ZoneInfo("Asia/Kathmandu"), ZoneInfo("America/St_Johns")):
        ledger = Ledger(f"sqlite:///{tmp_path / f'{made_in}.db'}", zone="Europe/Berlin")
        delta = RollupDelta()
        for span in spans:
            delta.add(span)
        with ledger.write() as conn:
            delta.write(conn, None if made_in is None else delta.rows(made_in))
        written.append(_tables(ledger))
        ledger.dispose()
    assert written[1] == written[0] and written[2] == written[0]


def test_ctrl_c_while_a_batch_is_written_counts_it_once_it_is(tmp_path: Path) -> None:
    """Ctrl-C while the reading thread waits for the batch being written: the import ends once
    that batch is (committed whole), and counts it, so the CLI's "the first N span(s) are
    recorded" is what the ledger holds, not a batch short."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", wait=10)
    ledger.count()
    spans = _spans(4)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    recorded = [0]

    def interrupt() -> None:
        time.sleep(0.5)  # the reading thread waits for the first batch by then
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        blocker.execute("ROLLBACK")

    def lines() -> Iterator[bytes]:
        blocker.execute("BEGIN IMMEDIATE")  # the first batch's write waits for it
        yield from map(export_line, spans[:3])
        threading.Thread(target=interrupt).start()
        yield export_line(spans[3])  # the second batch: sent once the first is written

    with pytest.raises(KeyboardInterrupt):
        import_lines(
            ledger, lines(), batch=2, progress=lambda n: recorded.__setitem__(0, recorded[0] + n)
        )
    assert recorded == [ledger.count()] == [2]
    blocker.close()
    ledger.dispose()
