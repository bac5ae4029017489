"""A ledger under a file size limit (``ulimit -f``, ``LimitFSIZE=`` in a systemd unit, a
container's or a shared host's limits): SQLite's write fails with EFBIG and says only "disk
I/O error", which reads as a failing disk, on a disk with room to spare."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from ollama_meter.ledger import Ledger, span_to_dict
from tests.ledger.test_transfer import _spans

LIMIT = 1 << 20


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def _ometer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollama_meter", *args], env=env, preexec_fn=_limited,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_write_past_the_file_size_limit_says_which_limit_and_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    export = tmp_path / "spans.jsonl"
    export.write_text("".join(json.dumps(span_to_dict(s)) + "\n" for s in _spans(6000)))
    done = _ometer("db", "import", str(export), env=env)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: the ledger at {db} failed: disk I/O error: this process may ")
    assert (
        ": this process may write no file past 1.0 MB (its file size limit: ulimit -f, or "
        "LimitFSIZE= in a systemd unit), and the ledger's "
    ) in line
    assert "raise or remove the limit for ometer" in line
    assert " span(s) before this batch are recorded: run the same import again" in line
    counted = Ledger(f"sqlite:///{db}").count()  # no limit here: it opens, as it was
    assert counted % 2000 == 0 and counted < 6000


def test_a_backup_past_the_file_size_limit_says_which_limit(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{db}").record(_spans(6000))
    assert db.stat().st_size > LIMIT
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{db}"}
    target = tmp_path / "copy.db"
    done = _ometer("db", "backup", str(target), env=env)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: could not back up {db} to {target}: ")
    assert line.endswith(
        ": this process may write no file past 1.0 MB (its file size limit: ulimit -f, or "
        "LimitFSIZE= in a systemd unit), and the copy has reached it: raise or remove the limit "
        "for ometer"
    ), line
    assert not target.exists() and not list(tmp_path.glob(".*partial*"))
