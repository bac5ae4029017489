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
new one (:class:`Waiting`), of the address holding the most such connections; a connection
whose request is being answered never is. So a flood from one machine makes room from its
own connections, and another caller's call, even a prompt that takes seconds to arrive,
gets through.
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


def peer_of(client: tuple[str, int] | None) -> str:
    """Whose a connection is, for :class:`Waiting`: its address, an IPv6 one by its /64 (one
    machine may take any address of its network's)."""
    host = client[0] if client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else host


class Waiting(Generic[Conn]):
    """One server's connections waiting on their callers, by address, in the order they began.

    A connection is noted each time it begins to wait (connected, a body to come, an answer
    done) and forgotten when it closes; whether it still waits is asked only when one must
    give way, so nothing is done per request but a few dict writes. The one that gives way
    is the longest waiting of the address holding the most: a flood from one machine lets
    its own go, not another caller's prompt still arriving."""

    def __init__(self) -> None:
        self._peer: dict[Conn, str] = {}
        self._of: dict[str, dict[Conn, None]] = {}  # each address's, longest waiting first
        self._holding: dict[int, dict[str, None]] = {}  # how many an address holds -> addresses
        self._most = 0

    def __len__(self) -> int:
        return len(self._peer)

    def __contains__(self, conn: object) -> bool:
        return conn in self._peer

    def began(self, conn: Conn, peer: str) -> None:
        self.gone(conn)
        self._peer[conn] = peer
        conns = self._of.setdefault(peer, {})
        self._move(peer, len(conns), len(conns) + 1)
        conns[conn] = None

    def gone(self, conn: Conn) -> None:
        peer = self._peer.pop(conn, None)
        if peer is None:
            return
        conns = self._of[peer]
        del conns[conn]
        self._move(peer, len(conns) + 1, len(conns))
        if not conns:
            del self._of[peer]

    def _move(self, peer: str, held: int, holds: int) -> None:
        if held:
            addresses = self._holding[held]
            del addresses[peer]
            if not addresses:
                del self._holding[held]
        if holds:
            self._holding.setdefault(holds, {})[peer] = None
        # Counts change by one: the most is the new count, or one less when its last left.
        self._most = max(self._most, holds)
        while self._most and self._most not in self._holding:
            self._most -= 1

    def longest(self, waits: Callable[[Conn], bool]) -> Conn | None:
        """The longest waiting connection of the address holding the most, that ``waits``
        still, forgotten here; None when none does. Those found no longer waiting are
        forgotten until they wait again."""
        while self._most:
            peer = next(iter(self._holding[self._most]))
            conn = next(iter(self._of[peer]))
            self.gone(conn)
            if waits(conn):
                return conn
        return None


def is_loopback(host: str) -> bool:
    """Whether the address ``host`` is one of this machine's loopback ones (an IPv4 one as an
    IPv6 socket writes it, ``::ffff:127.0.0.1``, too); ``localhost`` is. For a ``--host`` as
    given, read the address it binds (:func:`check_listen_host`): ``127.1`` and a name that
    resolves to 127.0.0.1 are loopback, however spelt."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


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
    return _bound(host, port, port)


def check_listen_host(host: str, port: int) -> str:
    """The address ``host`` binds (a name resolved as the socket resolves it), or what
    :func:`listening_socket` would raise for ``host`` itself (no address, a name that does
    not resolve, an address no interface has), without taking ``port``: said before what
    listening there would need (a key beyond loopback), which no key fixes."""
    with _bound(host, 0, port) as sock:
        return str(sock.getsockname()[0])


def _bound(host: str, port: int, shown: int) -> socket.socket:
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except socket.gaierror as exc:
        sock.close()
        raise ValidationError(
            f"cannot listen on {host}:{shown}: {bare} is no IP address, nor a name this "
            f"machine resolves ({exc.strerror or exc}); give an address of this machine, such "
            "as 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    except OSError as exc:
        sock.close()
        reason = _CANNOT_LISTEN.get(exc.errno or 0, exc.strerror or str(exc))
        raise ValidationError(f"cannot listen on {host}:{shown}: {reason}") from None
    return sock


def trusted_proxies(value: str) -> str:
    """``value`` (``--trusted-proxy``, ``FORWARDED_ALLOW_IPS``) as uvicorn takes it, checked:
    comma-separated IP addresses and networks (``10.0.0.5,10.1.0.0/16``), or ``*`` for any
    caller (a gateway only a proxy can reach); empty for none. ValidationError naming the
    entry that is neither."""
    entries = [entry.strip() for entry in value.split(",")] if value.strip() else []
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValidationError(
                f"{entry!r} is not an IP address or network; give the addresses of the proxies "
                "the gateway is behind, e.g. 10.0.0.5,10.1.0.0/16 (or * for any caller)"
            ) from None
    return ",".join(entries)


def proxy_options(trusted: str) -> dict[str, object]:
    """uvicorn's options for the proxies ``trusted`` (:func:`trusted_proxies`): only their
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` change the caller's address and scheme.
    uvicorn believes 127.0.0.1's by default, or FORWARDED_ALLOW_IPS's read behind ometer's
    back: any program on the gateway's machine chose the address a refusal was logged under
    with one header. With none named, the headers are not read at all."""
    if not trusted:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}
