"""A running process's journal removed under it (its spool folder cleaned away by hand, a
temporary folder's cleaner): the calls it answers next are still noted where the next
``ometer`` looks, so ``kill -9`` before their commit loses none."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import ollama
import pytest

from ollama_meter.ledger._journal import Journal, Orphan
from ollama_meter.testing import OllamaEmulator, expected_counts
from tests.factories import make_span
from tests.gateway.test_processes import logged, start_gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
MODEL = "llama3.1:8b"


@pytest.mark.parametrize("removed", ["l.db.spool", "l.db.spool/journal"])
def test_a_journal_removed_under_the_gateway_still_keeps_its_answered_calls(
    emulator: OllamaEmulator, tmp_path: Path, removed: str
) -> None:
    """The journal file was written through the descriptor the gateway opened once: removed,
    its lines went to a file no one could find, and the calls answered while the ledger was
    locked (their spans only in the journal) were lost with a ``kill -9``."""
    db = tmp_path / "l.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}", "OMETER_LEDGER_WAIT": "300"}
    proc, url = start_gateway(env, emulator.url)
    client = ollama.Client(host=url, timeout=60)
    client.chat(model=MODEL, messages=HI)  # the ledger made, the journal begun
    locker = sqlite3.connect(db, isolation_level=None)
    deadline = time.monotonic() + 60
    while locker.execute("SELECT count(*) FROM spans").fetchone() != (1,):  # its commit
        assert time.monotonic() < deadline, "the first call's span was never committed"
        time.sleep(0.01)
    shutil.rmtree(tmp_path / removed)
    try:
        locker.execute("BEGIN IMMEDIATE")  # every commit of the gateway waits for this
        for i in range(4):
            if i % 2:
                list(client.chat(model=MODEL, messages=HI, stream=True))
            else:
                client.chat(model=MODEL, messages=HI)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    spans = logged(env)  # `ometer log` opens the ledger: the dead gateway's spans go in
    assert len(spans) == 5
    assert {s["status"] for s in spans} == {"ok"}
    assert {(s["input_tokens"], s["output_tokens"]) for s in spans} == {expected_counts(MODEL, HI)}
    assert not list((tmp_path / "l.db.spool" / "journal").glob("*.journal"))


def _left_by_a_kill(live: Journal, other: Journal) -> list[Orphan]:
    """The calls ``other`` (a process opening the ledger) finds open in ``live``'s journal, as
    a ``kill -9`` of its process would leave it: its one file, locked by nobody."""
    (kept,) = live.directory.glob("*.journal")
    shutil.copy(kept, live.directory / "1-dead.journal")
    kept.unlink()
    with other.orphans() as orphans:
        return orphans


def test_a_copy_of_a_live_journal_put_back_is_never_taken_for_a_dead_process(
    tmp_path: Path,
) -> None:
    """A spool folder restored from a copy under a running process: the copy of its journal,
    at its path and locked by nobody, read as a dead process's, and its open call was recorded
    as interrupted while the process still ran it (its real span, by the same id, then added
    nothing). The process's next line rewrites its open calls to a file of its own and
    removes the copy."""
    folder = tmp_path / "journal"
    live, other = Journal(folder), Journal(folder)
    running, answered = make_span(), make_span()
    live.opened(running, 3)
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    shutil.rmtree(folder)
    shutil.copytree(saved, folder)  # put back: the same name, another file
    live.opened(answered, 3)
    assert live.finished(answered)
    with other.orphans() as orphans:  # another process opening the ledger
        assert orphans == []
    orphans = _left_by_a_kill(live, other)
    assert sorted((o.span.id, o.final) for o in orphans) == sorted(
        [(running.id, False), (answered.id, True)]
    )


def test_calls_open_while_the_journal_could_not_be_made_again_are_noted_once_it_can(
    tmp_path: Path,
) -> None:
    """Its folder removed and something else put in its place, the journal cannot be made
    again (each line is refused: the gateway then commits before answering); once it can, the
    calls still open are noted in the new file with the next line, not only in the removed one."""
    folder = tmp_path / "journal"
    live, other = Journal(folder), Journal(folder)
    running, during, after = make_span(), make_span(), make_span()
    live.opened(running, 3)
    shutil.rmtree(folder)
    folder.write_text("in the way")
    assert not live.finished(running)  # refused: nowhere to note it
    live.opened(during, 3)  # refused too (a warning)
    folder.unlink()
    live.opened(after, 3)
    orphans = _left_by_a_kill(live, other)
    assert sorted(o.span.id for o in orphans) == sorted([running.id, after.id])


def test_a_call_opened_after_the_journal_was_removed_makes_it_again_with_the_open_calls(
    tmp_path: Path,
) -> None:
    """A process that only opens calls and commits them itself (the Python API, ``ometer
    chat``): its calls in flight as its folder was removed are noted again with the next
    call, so a ``kill -9`` leaves each of them to be recorded as ``interrupted``."""
    folder = tmp_path / "journal"
    live, other = Journal(folder), Journal(folder)
    before, after = make_span(), make_span()
    live.opened(before, 3)
    shutil.rmtree(folder)
    live.opened(after, 3)
    orphans = _left_by_a_kill(live, other)
    assert sorted(o.span.id for o in orphans) == sorted([before.id, after.id])
