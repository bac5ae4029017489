"""A throwaway PostgreSQL cluster for the test session.

``OMETER_TEST_PG_URL`` (set by ``.ci/run``) points at a running server; without
it, a cluster is created with the machine's ``initdb`` in a temp folder on a
free port, as the ``postgres`` user when running as root, and removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


MEMORY_ROOM = 2 << 30
"""Free space /dev/shm must have to hold clusters (Docker's default 64 MB has not)."""


def memory_folder() -> str | None:
    """/dev/shm where it has room, else None (the temp folder): on this machine's disk each
    CREATE DATABASE, which every PostgreSQL test runs, took 0.63 s; in memory 0.10 s."""
    try:
        found = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if found.f_bavail * found.f_frsize >= MEMORY_ROOM else None


def create_database(conn: Connection, name: str, template: str | None = None) -> None:
    """``CREATE DATABASE name`` (a copy of ``template``, else of template1), its files copied
    where the server can (PostgreSQL 15 on: STRATEGY FILE_COPY). Its default there writes every
    page of the template into the WAL: two test processes each making and dropping databases,
    25 ms of the server's CPU and 0.12 s a database; copying the files, 18-23 ms and 0.08-0.10
    s. Every PostgreSQL test makes one, and a recorded ledger's copy is bigger."""
    from sqlalchemy import text

    copied = f' TEMPLATE "{template}"' if template else ""
    version = conn.dialect.server_version_info or ()
    if version >= (15,):
        copied += " STRATEGY FILE_COPY"
    conn.execute(text(f'CREATE DATABASE "{name}"{copied}'))


def run_client(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """A PostgreSQL client program (``pg_dump``, ``pg_restore``) from the machine's install,
    run; None when the machine has none."""
    program = _bin(argv[0])
    if program is None:
        return None
    return subprocess.run(
        [program, *argv[1:]], capture_output=True, text=True, timeout=120, check=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_INITDB_ONCE: dict[str, Path] = {}
"""initdb's output, made once a process: each private cluster starts as a copy of it. initdb
for each took 1.0-1.5 s on a busy machine (its bootstrap backend), a copy 0.1 s."""


def _made_once(initdb: str, run: Callable[..., None]) -> Path:
    if (made := _INITDB_ONCE.get(initdb)) is None:
        root = Path(tempfile.mkdtemp(prefix="ometer-pg-initdb-", dir=memory_folder()))
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        made = root / "data"
        run(initdb, "-D", str(made), "-U", "ometer", "--auth=trust", "-E", "UTF8", "--no-sync")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _INITDB_ONCE[initdb] = made
    return made


class PgCluster:
    """A private PostgreSQL cluster in a temp folder, which a test may stop and start again."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ometer-pg-", dir=memory_folder()))
        self.data = self.root / "data"
        self.port = _free_port()
        self._pg_ctl = pg_ctl
        self._prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres")
            self._prefix = ["runuser", "-u", "postgres", "--"]
        # A copy as the server's user, modes kept: PostgreSQL checks both of its folder.
        self._run("cp", "-a", str(_made_once(initdb, self._run)), str(self.data))

    @classmethod
    def create(cls) -> PgCluster | None:
        """A new, stopped cluster; None when this machine has no PostgreSQL to make one."""
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not pg_ctl:
            return None
        try:
            return cls(initdb, pg_ctl)
        except (subprocess.CalledProcessError, OSError, KeyError, LookupError):
            return None

    @property
    def url(self) -> str:
        """A superuser URL to the server, without a database."""
        return f"postgresql+psycopg://ometer@127.0.0.1:{self.port}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "log")
        self._run(self._pg_ctl, "-D", str(self.data), "-l", log, "-w", "-o", options, "start")

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        try:
            head = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (name) state ppid ...": the name may hold spaces, the rest never
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == head:
                children.append(int(stat.parent.name))
        return [head, *children]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stopped dead (SIGSTOP to all its processes) for the block, then resumed.

        Its kernel still accepts connections and bytes, and acknowledges them: nothing
        answers. However the block ends, the server runs again after it.
        """
        try:
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                    os.kill(pid, signal.SIGSTOP)
            yield
        finally:
            self.resume()

    def resume(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()  # a stopped server would never hear pg_ctl
        subprocess.run(
            [*self._prefix, self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )

    def stop_smart(self) -> subprocess.Popen[bytes]:
        """Begin a smart shutdown (``pg_ctl stop -m smart``, no wait): the server ends once
        its last session does, and turns every new connection away meanwhile ("the
        database system is shutting down"). The caller waits for the returned process."""
        return subprocess.Popen(
            [*self._prefix, self._pg_ctl, "-D", str(self.data), "-m", "smart", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def remove(self) -> None:
        self.stop()
        time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield a superuser URL to a server (without a database), or None when none can be had."""
    given = os.environ.get("OMETER_TEST_PG_URL")
    if given:
        yield given
        return
    cluster = PgCluster.create()
    if cluster is None:
        yield None
        return
    try:
        cluster.start()
    except (subprocess.CalledProcessError, OSError):
        cluster.remove()
        yield None
        return
    try:
        yield cluster.url
    finally:
        cluster.remove()
