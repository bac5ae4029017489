"""Where the gateway listens, how many connections it takes, and which gives way when full.

The socket is bound before the gateway says it runs (:func:`listening_socket`), so a port
in use is one line, not a server that announces itself and stops.

Each connection holds a file descriptor, and so does each call it sends on to Ollama: the
process takes :func:`connections_for` its open-file limit, and answers one past them 503.

A connection that waits on its caller (connected and silent, a head or a body still
trickling in, idle between requests) costs its caller nothing: one machine could open every
connection the process takes and keep them (a silent one for 60 s, a declared 32 MiB body
for minutes), and every other caller was refused for as long as it went on. So when the
process has them all, the connection that has waited longest on its caller is let go for the
new one (:class:`Waiting`); a connection whose request is being answered never is. Under
such a flood the held connections are the oldest: a caller's own head and body arrive in
milliseconds, so its call gets through.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

from ollama_meter.errors import ValidationError

FILES_RESERVED = 64
"""Descriptors kept for the process itself: the ledger, spool and journal files, logs, DNS."""
_MOST_FILES = 1 << 20


def open_files_limit() -> int:
    """This process's soft limit on open files, raised to the hard limit first (as Go's
    runtime does for every program): 1,024, the usual soft limit, is ~500 connections."""
    try:
        import resource
    except ImportError:  # not on this platform
        return _MOST_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    most = _MOST_FILES if hard == resource.RLIM_INFINITY else min(hard, _MOST_FILES)
    if soft != resource.RLIM_INFINITY and soft < most:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (most, hard))
            soft = most
        except (ValueError, OSError):  # a container that forbids it: keep what there is
            pass
    return _MOST_FILES if soft == resource.RLIM_INFINITY else int(soft)


def connections_for(files: int) -> int:
    """The connections a process allowed ``files`` open files takes: two descriptors each
    (the caller's, and its call's to Ollama) after the reserve."""
    return max(1, (files - FILES_RESERVED) // 2)


Conn = TypeVar("Conn")


class Waiting(Generic[Conn]):
    """One server's connections in the order they began to wait on their callers.

    A connection is noted each time it begins to wait (connected, a body to come, an answer
    done) and forgotten when it closes; whether it still waits is asked only when one must
    give way, so nothing is done per request but a dict write."""

    def __init__(self) -> None:
        self._since: dict[Conn, None] = {}

    def __len__(self) -> int:
        return len(self._since)

    def began(self, conn: Conn) -> None:
        self._since.pop(conn, None)
        self._since[conn] = None

    def gone(self, conn: Conn) -> None:
        self._since.pop(conn, None)

    def longest(self, waits: Callable[[Conn], bool]) -> Conn | None:
        """The connection that has waited longest and ``waits`` still, forgotten here; None
        when none does. Those found no longer waiting are forgotten until they wait again."""
        while self._since:
            conn = next(iter(self._since))
            del self._since[conn]
            if waits(conn):
                return conn
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) listens only on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_CANNOT_LISTEN = {
    errno.EADDRINUSE: "the port is in use (another gateway, or Ollama itself?); choose another "
    "--port",
    errno.EACCES: "not allowed (a port below 1024 needs root); choose a --port from 1024 up",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address; give one it "
    "has, 127.0.0.1 or 0.0.0.0",
}


def listening_url(host: str, port: int) -> str:
    """The gateway's address as a client takes it (``OLLAMA_HOST``): an IPv6 host in brackets."""
    bare = host.strip("[]")
    return f"http://[{bare}]:{port}" if ":" in bare else f"http://{host}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound before it says it is running (``port`` 0: any free one).

    A port in use or an address this machine does not have is a one-line error
    saying what to change, not a server that announces itself and then stops.
    """
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        reason = _CANNOT_LISTEN.get(exc.errno or 0, exc.strerror or str(exc))
        raise ValidationError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock
