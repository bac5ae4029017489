"""The session settings each ledger transaction on PostgreSQL runs under, however it connected.

ometer sends them as it connects, in libpq's ``options``: its ``lock_timeout`` and
``idle_in_transaction_session_timeout``, ISO dates, and a URL's own (``-csearch_path=meter``
puts a ledger in a schema). A connection pooler between ometer and the server (PgBouncer)
refuses them, or, told to (``ignore_startup_parameters = options``), drops them without a word:
a lock another session held then made a write wait for ever (for upkeep) or until the deadline
on every answer took the server for frozen, a process stopped inside a write held its locks for
ever, a database's German ``DateStyle`` reached a driver that reads only ISO dates, and a URL's
schema was lost (the ledger made in ``public``).

So each new connection asks the server, in one round trip, whether they are in force. Where they
are not, each transaction sets them for itself (``set_config(..., true)``, ``SET LOCAL``): a
session-wide ``SET`` would not follow ours to the server session a pooler in transaction pooling
lends for the next transaction, and would stay with that session for the pooler's next client.
Such a connection prepares no statement either: the next transaction's server session has not got
it ("prepared statement does not exist"). A direct connection pays the one round trip, once.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, Connection

log = logging.getLogger("ollama_meter.ledger")

DROPPED = "ometer_session_settings"
"""Where a connection's pool record keeps the settings each of its transactions must set."""


def settings_in(options: str) -> dict[str, str]:
    """The settings a libpq ``options`` string makes (``-c name=value``, ``-cname=value``,
    ``--name=value``), by name as the server knows it (lower case, ``_`` for ``-``); the last
    one wins, as on the server. Other switches are not settings."""
    words = _split(options)
    found: dict[str, str] = {}
    for index, word in enumerate(words):
        if word == "-c" and index + 1 < len(words):
            setting = words[index + 1]
        elif word.startswith(("-c", "--")) and len(word) > 2:
            setting = word[2:]
        else:
            continue
        name, equals, value = setting.partition("=")
        if equals and name.strip():
            found[name.strip().lower().replace("-", "_")] = value
    return found


_SPACE = " \t\n\v\f\r"
"""What ends a word of ``options`` for the server (C's ``isspace``)."""


def _split(options: str) -> list[str]:
    """``options`` in words as the server splits them (``pg_split_opts``): at white space,
    except where a backslash escapes the next character (itself taken away)."""
    words: list[str] = []
    word: list[str] | None = None
    escaped = False
    for char in options:
        if char in _SPACE and not escaped:
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        word = [] if word is None else word
        if char == "\\" and not escaped:
            escaped = True
            continue
        escaped = False
        word.append(char)
    if word is not None:
        words.append("".join(word))
    return words


def url_options(url: URL) -> str:
    """A URL's own ``?options=`` (several joined), empty when it has none."""
    given = url.query.get("options")
    return " ".join(given) if isinstance(given, tuple) else given or ""


def session_options(url: URL, ours: str, needed: str) -> str:
    """``ours``, then the URL's own ``options`` (``-csearch_path=meter`` puts the ledger in a
    schema), then ``needed``: connect arguments replace the URL's, which were silently
    dropped. A setting the URL names itself wins over ``ours`` (its own lock timeout), never
    over ``needed``, what the driver cannot do without: a URL's ``-cDateStyle=German``
    made every read of a time "unexpected NotImplementedError", a gateway's calls 500."""
    return " ".join(part for part in (ours, url_options(url), needed) if part)


_CHECK = (
    "SELECT s.name, current_setting(s.name), set_config(s.name, w.value, true) "
    "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS w(name, value, n) "
    "JOIN pg_settings AS s ON lower(s.name) = w.name "
    "WHERE s.context = 'user' ORDER BY w.n"
)
"""Each setting as the session has it, and as the ``options`` would make it (the server's own
spelling both times: ``ISO, DMY``, ``800``), set for the statement's own transaction only. Only
what any role may set in a running session: the rest the server takes at the start or not at
all, and a pooler cannot have dropped a difference a transaction could make up for."""


def hold_session_settings(engine: Engine, options: str) -> None:
    """Check each new connection of ``engine`` for the settings ``options`` makes, and set them
    in each transaction of a connection that has not got them. Listens before any other
    ``begin`` listener, so what a transaction sets of its own (a glance's shorter
    ``lock_timeout``, upkeep's idle timeout) comes after."""
    wanted = settings_in(options)
    if not wanted:
        return
    said: list[bool] = []

    def connect(dbapi_connection: Any, record: Any) -> None:
        record.info.pop(DROPPED, None)  # a record reconnecting: this connection is asked anew
        autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
        try:  # a transaction of its own: the settings it sets end with it, in one round trip
            rows = dbapi_connection.execute(
                _CHECK, (list(wanted), list(wanted.values()))
            ).fetchall()
        finally:
            dbapi_connection.autocommit = autocommit
        lacking = [name for name, before, after in rows if before != after]
        if not lacking:
            return
        dbapi_connection.prepare_threshold = None
        names = [name for name, _, _ in rows]
        record.info[DROPPED] = (
            "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(names)),
            tuple(part for name in names for part in (name, wanted[name.lower()])),
        )
        if not said:
            said.append(True)
            log.info(
                "the server's sessions lack the settings ometer sent as it connected (%s): a "
                "connection pooler dropped them, so each transaction sets them",
                ", ".join(lacking),
            )

    def begin(conn: Connection) -> None:
        if setting := conn.connection.info.get(DROPPED):
            statement, values = setting
            conn.exec_driver_sql(statement, values, execution_options={"stream_results": False})

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", begin)
