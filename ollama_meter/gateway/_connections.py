"""How many connections one gateway process takes, and which gives way when it has them all.

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

from collections.abc import Callable
from typing import Generic, TypeVar

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
