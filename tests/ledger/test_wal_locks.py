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
import threading
from pathlib import Path
from typing import Any

import pytest

from ollama_meter._paths import first_bytes
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._engine import create_ledger_engine
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


_IN_USE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:  # SQLite's shared lock bytes of the file: a connection that has it open holds one
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002)
except OSError:
    print("in use")
else:
    print("not in use")
"""


def test_a_connection_opened_while_a_look_at_the_file_is_open_keeps_its_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look at the file with no connection of this process open (it opens and closes a
    descriptor: ``first_bytes``), and a connection another thread opens meanwhile: the look's
    close dropped the lock that says the connection has the file open, and another process,
    taking itself for its last user, could delete its ``-wal`` and ``-shm`` under it."""
    path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{path}").dispose()
    engine = create_ledger_engine(f"sqlite:///{path}")
    opened, go_on, reading, done = (threading.Event() for _ in range(4))
    plain_open = Path.open

    def held_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        file = plain_open(self, *args, **kwargs)
        if self == path:
            opened.set()
            go_on.wait(30)
        return file

    monkeypatch.setattr(Path, "open", held_open)
    look = threading.Thread(target=first_bytes, args=(path, 16))
    look.start()
    assert opened.wait(30)

    def read() -> None:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
            reading.set()
            done.wait(30)
        finally:
            raw.close()

    reader = threading.Thread(target=read)
    reader.start()
    reading.wait(0.5)  # long enough for the connection to lock the file, where it may
    go_on.set()
    look.join(30)
    assert reading.wait(30)
    try:
        other = subprocess.run(
            [sys.executable, "-c", _IN_USE, str(path)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert other.stdout.strip() == "in use"
    finally:
        done.set()
        reader.join(30)
        engine.dispose()


def test_a_caller_waits_for_one_of_the_pools_connections_as_long_as_for_a_busy_file(
    tmp_path: Path,
) -> None:
    """Every connection of the pool in use: the next caller gives up after the ledger's wait
    (OMETER_LEDGER_WAIT), as it would for a lock, not SQLAlchemy's 30 s."""
    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}", wait=0.2)
    held = []
    refused: list[BaseException] = []

    def one_more() -> None:
        try:
            engine.raw_connection().close()
        except BaseException as exc:  # what the pool says is the point
            refused.append(exc)

    try:
        while True:  # the pool's connections, and all it may make beside them
            held.append(engine.raw_connection())
            if len(held) == engine.pool.size() + engine.pool._max_overflow:  # type: ignore[attr-defined]
                break
        caller = threading.Thread(target=one_more)
        caller.start()
        caller.join(10)
        assert not caller.is_alive()
        assert [type(exc).__name__ for exc in refused] == ["TimeoutError"]
    finally:
        for connection in held:
            connection.close()
        engine.dispose()
