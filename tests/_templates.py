"""Ledgers made once per test process and copied for each test that starts from one.

A test that reads a recorded ledger (the office's 430 spans, say) recorded it again each
time: 0.15 s on SQLite and 0.9 s on PostgreSQL, before it did what it tests. The first test
to ask for a ledger has it made; every test (that one too) gets a copy: the file on SQLite,
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL. A copy holds the same rows, byte for byte,
as the ledger ``make`` leaves; the test opens it as it opened the one it recorded.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from ollama_meter.ledger import Ledger
from tests._pg import create_database


class LedgerTemplates:
    def __init__(self, folder: Path, admin: Callable[[str], Engine]) -> None:
        self._folder = folder
        self._admin = admin
        self._made: dict[tuple[str, str], str] = {}
        """(what, where) -> the template: a SQLite file's path, or a PostgreSQL database."""

    def copy(self, url: str, what: str, make: Callable[[str], Ledger]) -> None:
        """Make ``url``, a fresh ledger URL (``db_url``: no file yet, or an empty database),
        a copy of the ledger ``make(url)`` records and returns; ``what`` names that ledger."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            assert parsed.database is not None
            target = Path(parsed.database)
            assert not target.exists(), f"{target} is not a fresh ledger"
            shutil.copyfile(self._template(what, "sqlite", make), target)
            return
        assert parsed.database is not None
        server = url.rsplit("/", 1)[0]
        template = self._template(what, server, make)
        with self._admin(server).connect() as conn:  # the same name, now a copy
            conn.execute(text(f'DROP DATABASE "{parsed.database}"'))
            create_database(conn, parsed.database, template)

    def _template(self, what: str, where: str, make: Callable[[str], Ledger]) -> str:
        if (what, where) in self._made:
            return self._made[(what, where)]
        if where == "sqlite":
            made = str(self._folder / f"{uuid.uuid4().hex[:12]}.db")
            make(f"sqlite:///{made}").dispose()
            with contextlib.closing(sqlite3.connect(made)) as db:  # all in the one file
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            made = f"template_{uuid.uuid4().hex[:12]}"
            with self._admin(where).connect() as conn:
                create_database(conn, made)
            make(f"{where}/{made}").dispose()  # a template is copied with no session on it
        self._made[(what, where)] = made
        return made

    def remove(self) -> None:
        for (_, where), made in self._made.items():
            if where != "sqlite":
                with contextlib.suppress(Exception), self._admin(where).connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{made}" WITH (FORCE)'))
        self._made.clear()


@contextlib.contextmanager
def ledger_templates(folder: Path, admin: Callable[[str], Engine]) -> Iterator[LedgerTemplates]:
    templates = LedgerTemplates(folder, admin)
    try:
        yield templates
    finally:
        templates.remove()
