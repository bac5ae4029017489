"""A real PgBouncer in front of the test session's PostgreSQL server (Debian's ``pgbouncer``).

Every database of the server is reachable through it (``* =``), with the pool mode asked for
and ``ignore_startup_parameters = options``: what a DBA sets up when a pooler refuses the
session settings a client sends in libpq's ``options`` (ometer's lock and idle timeouts, ISO
dates, a URL's own search path), which it then drops without a word.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
)
"""Debian installs it outside a user's PATH."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def pgbouncer(server: str, pool_mode: str, *, ignore: bool = True, more: str = "") -> Iterator[str]:
    """Run PgBouncer in ``pool_mode`` in front of ``server`` (a URL without a database, as
    ``pg_server`` gives); yield the same URL through the pooler. ``ignore``: it drops
    ``options`` (else it refuses a connection that sends them); ``more``: lines of its
    ``[pgbouncer]`` settings besides. Stopped at the end."""
    assert PGBOUNCER is not None
    target = make_url(server)
    folder = Path(tempfile.mkdtemp(prefix="ometer-pgbouncer-"))
    port = _free_port()
    password = f" password={target.password}" if target.password else ""
    (folder / "users.txt").write_text(f'"{target.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\n"
        f"ignore_startup_parameters = {'options' if ignore else ''}\n"
        f"logfile = {folder / 'log'}\n{more}"
    )
    command = [PGBOUNCER, "-q", str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for made in folder.iterdir():
            shutil.chown(made, "postgres")
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                said = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"pgbouncer did not start: {said}")
            time.sleep(0.02)
        yield target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
