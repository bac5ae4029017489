"""A process's look at a SQLite ledger's first bytes must not drop the locks it holds there.

POSIX record locks belong to the process and the file: closing any descriptor of the file
drops every lock the process holds on it, its SQLite connections' too. ometer read a
ledger's header with a plain ``open()`` each time it connected while another process's WAL
held changes; that other process, closing last as far as the locks said, then deleted the
``-shm`` file under this one's open connections: its next statement failed with "disk I/O
error" (seen while a 0016 gateway wrote during ``ometer db upgrade``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ollama_meter.ledger import Ledger, SpanFilter
from tests.factories import make_span

_OTHER = """
import sys
from ollama_meter.ledger import Ledger
from tests.factories import make_span
ledger = Ledger(sys.argv[1])
ledger.record([make_span(department="other")])  # its changes wait in the WAL
print("written", flush=True)
sys.stdin.readline()
ledger.dispose()  # the last connection, as far as the locks say: it cleans the WAL up
"""

_COUNT = """
import sys
from ollama_meter.ledger import Ledger, SpanFilter
print(*sorted(s.department for s in Ledger(sys.argv[1]).latest(SpanFilter(), 10)))
"""


def test_connecting_while_another_process_has_changes_in_the_wal_keeps_this_ones_locks(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.record([make_span(department="first")])
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert other.stdout is not None and other.stdout.readline() == "written\n", other.stderr
    assert (tmp_path / "ledger.db-wal").stat().st_size > 32
    second = Ledger(url)  # a new connection here, as `ometer db upgrade` in a gateway's process
    assert second.count(SpanFilter()) == 2
    _, err = other.communicate("\n", timeout=60)
    assert other.returncode == 0, err
    ledger.record([make_span(department="last")])  # on the connection opened first
    seen = subprocess.run(  # by another process, while this one still has the ledger open
        [sys.executable, "-c", _COUNT, url],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert seen.stdout.split() == ["first", "last", "other"], seen.stderr
    ledger.dispose()
    second.dispose()
    again = Ledger(url)
    assert again.count(SpanFilter()) == 3
    again.dispose()
