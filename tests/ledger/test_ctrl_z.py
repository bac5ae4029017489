"""Ctrl-Z of a bulk command stops it between pieces, holding no transaction: stopped in the
middle of one it kept SQLite's write lock, and every gateway on the ledger waited on each
call and then spooled its span until someone typed ``fg``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ollama_meter.ledger import Ledger, close_ledgers, span_to_dict
from tests.ledger.test_transfer import _spans


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(done: object, what: str) -> None:
    deadline = time.monotonic() + 60  # a wait for it to happen, not a measure
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_ctrl_z_in_the_middle_of_an_import_stops_it_once_its_batch_is_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{path}").record(_spans(1, seed=1))  # a ledger gateways write to
    close_ledgers()
    export = tmp_path / "spans.jsonl"
    export.write_text("".join(json.dumps(span_to_dict(s)) + "\n" for s in _spans(2010)))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # so the import's first batch waits for the lock
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{path}", "OMETER_LEDGER_WAIT": "120"}
    command = [sys.executable, "-m", "ollama_meter", "db", "import", str(export)]
    # Its own process group in this session, as a shell's job is: one nobody's parent is
    # in (an orphan) would be sent no Ctrl-Z at all
    with subprocess.Popen(
        command, env=env, process_group=0, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as run:
        try:
            wchan = Path(f"/proc/{run.pid}/wchan")
            _until(lambda: "nanosleep" in wchan.read_text() or run.poll() is not None, "no wait")
            assert run.poll() is None, run.communicate()
            run.send_signal(signal.SIGTSTP)  # Ctrl-Z, its first batch waiting for the lock
            holder.execute("ROLLBACK")
            _until(lambda: _state(run.pid) == "T", "it did not stop")
            # Stopped: its first batch committed, and the ledger takes another writer at once
            writer = sqlite3.connect(path, isolation_level=None, timeout=0)
            writer.execute("BEGIN IMMEDIATE")
            counted = writer.execute("SELECT count(*) FROM spans").fetchone()
            writer.execute("ROLLBACK")
            writer.close()
            assert counted == (1 + 2000,)
        except BaseException:
            run.kill()  # never left stopped, with this test waiting for it
            raise
        run.send_signal(signal.SIGCONT)  # fg
        out, err = run.communicate(timeout=60)
    holder.close()
    assert run.returncode == 0, err
    assert b"2,010" in out + err
    assert Ledger(f"sqlite:///{path}").count() == 1 + 2010
    close_ledgers()
