"""A deadline on every answer the ledger waits for from a PostgreSQL server.

A server that stops answering without closing the connection (frozen by
``SIGSTOP``, a VM paused, a disk stalled under it, a firewall that drops
packets) is invisible to the usual guards: its kernel still acknowledges what
is sent, so TCP keepalives and ``tcp_user_timeout`` never fire, and the
server-side ``statement_timeout`` needs a server that runs. Without a bound of
our own a span write would wait for ever, the spool would never be used, and a
gateway's threads would fill up one caller at a time.

So each round trip on a ledger connection (a statement, a commit, the pool's
ping) is watched: when the server has not answered within the deadline
(``OMETER_LEDGER_WAIT``), one watchdog thread shuts the connection's socket
down. The driver then fails as it does for a server that went away, the pool
drops the connection, and the ledger's usual path takes over: spans go to the
spool, a budget that cannot be checked refuses the call. Connecting is bounded
by the driver's own ``connect_timeout``. A server that has just let a wait run out
is not asked again for as long (new connections fail at once), so callers do not
each wait it out in turn behind a frozen server.

The deadline cannot tell a frozen server from a statement that runs longer than
the wait on a healthy one; none that a call, a report or the dashboard makes
comes near it (1 to 380 ms on a 1M-span ledger).

Work that may rightly take longer than a call's write (migrations, rebuilding
rollups) runs inside :func:`unbounded`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import PQGen

RV = TypeVar("RV")
P = ParamSpec("P")

_unbounded: contextvars.ContextVar[bool] = contextvars.ContextVar("ometer_unbounded", default=False)


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """Ledger work in this block may wait for the server as long as it takes."""
    token = _unbounded.set(True)
    try:
        yield
    finally:
        _unbounded.reset(token)


_recording_nothing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ometer_recording_nothing", default=False
)


@contextlib.contextmanager
def recording_nothing() -> Iterator[None]:
    """Ledger work in this block records no call (opening the ledger; a command such as
    ``report`` or ``budget set``): a failure's message promises no spool."""
    token = _recording_nothing.set(True)
    try:
        yield
    finally:
        _recording_nothing.reset(token)


def spooled_meanwhile() -> str:
    """What a failure's message says of the spans it leaves: they wait in the spool, except in
    bulk work (run again, not recorded later) and where nothing is recorded."""
    if _unbounded.get() or _recording_nothing.get():
        return ""
    return "; spans wait in the spool meanwhile"


def cut_short(exc: BaseException | None) -> bool:
    """Whether ``exc`` is this module's own: a round trip the server let run past the
    deadline, whose connection ometer closed (not a session the server ended)."""
    return getattr(exc, "ometer_silent", False) is True


def in_bulk() -> bool:
    """Whether this is upkeep over many spans (:func:`unbounded`), whose spans never go to the
    spool: a failure there is run again, not recorded later."""
    return _unbounded.get()


def bulk(work: Callable[P, RV]) -> Callable[P, RV]:
    """``work`` runs inside :func:`unbounded`: upkeep over many spans (an import, a prune,
    a re-pricing), whose statements may rightly take longer than a call's write."""

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> RV:
        with unbounded():
            return work(*args, **kwargs)

    return run


class Watchdog:
    """Shuts down the sockets of round trips that overran their deadline; one thread for all.

    Arming and disarming take a lock and touch a dict: the thread is woken only when a
    new deadline is earlier than the one it sleeps towards (rarely: deadlines are "now
    plus the same wait", so a later arm has a later deadline).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}
        self._ids = itertools.count()
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> int:
        """Watch ``fd`` for ``seconds``; the token to :meth:`disarm` it with."""
        token = next(self._ids)
        deadline = time.monotonic() + seconds
        with self._cond:
            self._armed[token] = (deadline, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="ometer-ledger-deadline", daemon=True
                )
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True when the deadline passed and the socket was shut down."""
        with self._cond:
            return self._armed.pop(token, None) is None

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        _shut_down(fd)  # under the lock: the owner cannot have moved on
                self._wake_at = min((d for d, _ in self._armed.values()), default=float("inf"))
                self._cond.wait(None if self._wake_at == float("inf") else self._wake_at - now)

    def _after_fork(self) -> None:
        """A forked child has no watchdog thread: it starts its own on first use."""
        self._cond = threading.Condition(threading.Lock())
        self._armed.clear()
        self._wake_at = float("inf")
        self._thread = None


def _shut_down(fd: int) -> None:
    """End the connection on ``fd`` for both directions; the driver sees the server leave.

    The socket object is a duplicate (closing it leaves the driver's descriptor alone);
    shutting it down acts on the connection they share.
    """
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the driver has its answer


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)


SERVER_CHANGING = (
    "the database system is starting up",
    "the database system is not yet accepting connections",  # replaying WAL (PostgreSQL 14+)
    "the database system is not accepting connections",  # a standby not yet open to reads
    "the database system is shutting down",
    "the database system is in recovery mode",
)
"""What a PostgreSQL server that is starting, recovering or stopping answers a connection."""

AT_CONNECTION_LIMIT = (
    "too many clients already",  # the server's max_connections
    "too many connections for",  # a role's or a database's CONNECTION LIMIT
    "remaining connection slots are reserved",  # what max_connections keeps for superusers
    "no more connections allowed",  # PgBouncer's max_client_conn
)
"""What a PostgreSQL server with no connection to spare answers: one frees as a client ends."""

NOTHING_LISTENS = (
    "connection refused",
    "no route to host",
    "network is unreachable",
    "temporary failure in name resolution",
    "no such file or directory",  # its Unix socket: no server made it
)
"""What the driver says when no server is there to answer: it was stopped, or the URL
names the wrong host or port. libpq's words alone said neither, nor what to do."""

NOT_POSTGRESQL = (
    "invalid response to ssl negotiation",
    "expected authentication request from server",
)
"""What libpq says when what answers at the address speaks another protocol: the URL names
the port of an HTTP server (the gateway's, Ollama's). Its "received invalid response to SSL
negotiation: H" said neither what was wrong nor what to do."""


_SETTING_REFUSED = (
    "unrecognized configuration parameter",
    "invalid value for parameter",
    "cannot be changed",  # without restarting the server; or after the connection starts
    "requires a value",
    "invalid command-line argument",
    "permission denied to set parameter",
)
"""What a server says, as it turns a connection away, of a setting in libpq's ``options``:
ometer's own are valid, so it is the URL's."""

_OPTION = re.compile(r'invalid connection option "[^"]*"$')
"""libpq's refusal of a query parameter of the URL that it does not know (``?sslmod=``)."""

_VALUE = re.compile(r'invalid \w+ value: "[^"]*"$')
"""libpq's refusal of a value a parameter cannot take (``?sslmode=requires``)."""


def not_there(said: str) -> str | None:
    """What to do when a connection found no PostgreSQL server at the URL's address, or one
    that turned it away for what the URL or the server's set-up says (``said``: the driver's
    words, in lower case); None otherwise. libpq's words name no fix."""
    if "host '%2f" in said or 'host name "%2f' in said:  # libpq's URI for a socket's folder
        return (
            "a Unix socket's folder goes in ?host= in OMETER_DB_URL "
            "(postgresql+psycopg://user@/ledger?host=/var/run/postgresql), not percent-encoded "
            "in the host's place as libpq's own URIs write it"
        )
    if "failed to resolve host" in said or "could not translate host name" in said:
        return (
            "no host of that name is known to this machine (DNS, /etc/hosts): correct the host "
            "in OMETER_DB_URL"
        )
    if "server does not support ssl" in said:
        return (
            "the server at that address takes no SSL connections, and sslmode (in OMETER_DB_URL, "
            "or PGSSLMODE) asks for them: turn SSL on at the server (ssl = on in "
            "postgresql.conf, with its certificate), or correct the host and port in "
            "OMETER_DB_URL; on a network you trust, sslmode=prefer connects without"
        )
    if "root certificate file" in said and "does not exist" in said:  # its fix on a line cut
        return (
            "sslmode=verify-full (or verify-ca) verifies the server's certificate, and no root "
            "certificate to verify it with is there: give its CA's certificate "
            "(?sslrootcert=/path/to/ca.crt in OMETER_DB_URL, or sslrootcert=system for this "
            "machine's trusted roots), or sslmode=require to encrypt without verifying"
        )
    if "certificate verify failed" in said:
        return (
            "the server's certificate is not signed by a root certificate sslrootcert gives (in "
            "OMETER_DB_URL; ~/.postgresql/root.crt when none is named): give its CA's "
            "certificate there, or sslmode=require to encrypt without verifying"
        )
    if "does not match host name" in said:
        return (
            "the server's certificate is for another name: give the host by the name its "
            "certificate holds in OMETER_DB_URL, or sslmode=verify-ca to verify the "
            "certificate but not the name"
        )
    if "no pg_hba.conf entry" in said or "pg_hba.conf rejects" in said:
        return (
            "the server's pg_hba.conf lets this user in to this database from no address this "
            "machine connects from; add a line for it there (then SELECT pg_reload_conf()), or "
            "correct the user, database and host in OMETER_DB_URL; a line for SSL connections "
            "(hostssl) alone wants sslmode=require in OMETER_DB_URL"
        )
    if "fatal:" in said and any(words in said for words in _SETTING_REFUSED):
        return (
            "the server refused a setting the URL's ?options= gives (-c name=value): correct or "
            "remove it in OMETER_DB_URL (a setting the server knows, with a value it takes, that "
            "a session may change)"
        )
    if _OPTION.search(said):
        return "correct or remove it in OMETER_DB_URL"
    if _VALUE.search(said):
        return "correct it in OMETER_DB_URL"
    if any(words in said for words in NOTHING_LISTENS):
        return (
            "no server answers at that address: start it, or correct the host and port in "
            "OMETER_DB_URL"
        )
    if any(words in said for words in NOT_POSTGRESQL):
        return (
            "what answers at that address is not a PostgreSQL server (an HTTP server, say): "
            "correct the host and port in OMETER_DB_URL"
        )
    if "not allowed in statement pooling mode" in said:
        return (
            "a connection pooler (PgBouncer, say) answers at that address, pooling by "
            "statement, and every ledger write is a transaction (a span and its rollups "
            "together); have it pool this database by transaction (pool_mode = transaction) "
            "or session, or point OMETER_DB_URL at PostgreSQL itself"
        )
    if "unsupported startup parameter" in said:
        return (
            "a connection pooler (PgBouncer, say) answers at that address and refuses the "
            "session settings ometer sends as it connects (its lock and idle timeouts, ISO "
            "dates); have the pooler drop them (PgBouncer: ignore_startup_parameters = "
            "options), and ometer sets them in each transaction, or point OMETER_DB_URL at "
            "PostgreSQL itself"
        )
    return None


def bounded_connect(deadline: float) -> Any:
    """A ``psycopg`` connect function whose connections give up on a silent server.

    ``deadline`` is seconds per round trip. Once the server has let a round trip or a
    connection attempt run out, new connections are refused at once for the next
    ``deadline`` seconds: the next callers go straight to the spool (or are refused,
    for a budget that needs the ledger) instead of each waiting out the deadline
    again; then one asks again.
    """
    import psycopg

    silent = f"the server did not answer within {deadline:g} s (OMETER_LEDGER_WAIT)"
    hint = "it is stopped, overloaded or cut off"
    quiet_until = [0.0]

    class BoundedConnection(psycopg.Connection[Any]):
        def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
            if _unbounded.get() or self.closed:
                return super().wait(gen, *args, **kwargs)
            token = WATCHDOG.arm(self.pgconn.socket, deadline)
            try:
                result = super().wait(gen, *args, **kwargs)
            except psycopg.OperationalError as exc:
                if WATCHDOG.disarm(token):
                    raise self._silent() from exc
                raise
            except BaseException:
                WATCHDOG.disarm(token)
                raise
            if WATCHDOG.disarm(token):  # answered as the deadline passed: the socket is gone
                raise self._silent()
            return result

        def _silent(self) -> psycopg.OperationalError:
            self.pgconn.finish()  # closed: the pool drops it instead of lending it again
            quiet_until[0] = time.monotonic() + deadline
            cut = psycopg.OperationalError(f"{silent}: {hint}{spooled_meanwhile()}")
            cut.ometer_silent = True  # type: ignore[attr-defined]  # (cut_short)
            return cut

    def connect(*args: Any, **kwargs: Any) -> BoundedConnection:
        if time.monotonic() < quiet_until[0] and not _unbounded.get():
            raise psycopg.OperationalError(f"{silent}: {hint}{spooled_meanwhile()}")  # a moment ago
        try:
            return BoundedConnection.connect(*args, **kwargs)
        except psycopg.OperationalError as exc:
            if "timeout expired" in str(exc):  # connect_timeout: nothing answered the login
                quiet_until[0] = time.monotonic() + deadline
            raise

    return connect
