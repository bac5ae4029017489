"""Write-behind under faults: a full disk under the journal, a journal rotating while another
process recovers, a commit that races the call's close. The gateway answers a call once its
span is whole in the journal: each test checks that "whole" is true, and that what a dead
process's journal says is what happened."""

from __future__ import annotations

import shutil
from pathlib import Path

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import Journal
from ollama_meter.meter._recovery import recover_interrupted
from tests._tmpfs import small_tmpfs
from tests.factories import make_span
from tests.integrity.test_disk_full import fill
from tests.integrity.test_journal_lines import _no_prices


def _as_dead(writer: Journal, ledger: Ledger, name: str) -> Path:
    """A copy of ``writer``'s file as a process killed now leaves it (nobody holds its lock)."""
    assert writer._path is not None
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    dead = ledger.journal.directory / f"9-{name}.journal"
    shutil.copy(writer._path, dead)
    return dead


def test_a_journal_line_a_full_disk_cuts_short_is_not_taken_for_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A write to a full disk writes what fits in the file's last block and says so by its
    count, not by an error: the whole span was taken for noted (the call answered before its
    commit) while the journal held half a line, which also swallowed the next call's
    opening once there was room again. A kill then recorded the answered call as
    interrupted and left no trace of the next one."""
    ledger = Ledger(sqlite_url)
    with small_tmpfs(tmp_path, "1m") as disk:
        writer = Journal(disk / "journal")
        answered = make_span(prompt="p" * 100, reply="r" * 20_000)  # content capture on
        writer.opened(answered, 3)  # the file's first block, with room left in it
        filler = fill(disk)
        assert not writer.finished(answered)  # not whole: committed before its answer
        filler.unlink()
        later = make_span()
        writer.opened(later, 5)
        _as_dead(writer, ledger, "torn")
        writer.close()
    assert recover_interrupted(ledger, _no_prices) == 2
    stored = {s.id: s for s in ledger.latest(SpanFilter(), 100)}
    assert {i: (s.status, s.input_tokens) for i, s in stored.items()} == {
        answered.id: ("interrupted", 3),
        later.id: ("interrupted", 5),
    }
    assert not (ledger.journal.quarantine_dir).exists()
