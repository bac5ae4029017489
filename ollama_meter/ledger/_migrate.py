"""Bringing a ledger's schema to the current Alembic head.

Checking costs one small query, so every process can afford it at start-up;
Alembic itself is loaded only when there is something to do. Concurrent first
runs are serialised by the migration transaction (BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL), so the losers find the work done.
"""

from __future__ import annotations

from importlib.resources import as_file, files

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ollama_meter.errors import LedgerError
from ollama_meter.ledger._deadline import unbounded

HEAD_REVISION = "0014"
"""The newest migration; a test keeps it equal to the head of ``migrations/versions``."""


def current_revision(engine: Engine) -> str | None:
    """The ledger's schema revision, None for an empty database; connection failures raise."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            if conn.invalidated or "version" not in str(exc.orig).lower():
                raise  # not "no such table": the database itself failed
            conn.rollback()
            return None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction.

    A ledger a newer ometer migrated is at a revision this one does not know: that
    is a clear error (upgrade ometer), never a guess at its schema.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    with as_file(files("ollama_meter._migrations")) as location:
        config = Config()
        config.set_main_option("script_location", str(location))
        try:
            # A migration may rewrite a big table: no deadline on the server's answers.
            with unbounded(), engine.connect() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except DBAPIError as exc:
            raise LedgerError(
                f"could not migrate the ledger at {engine.url.render_as_string()}: "
                f"{exc.orig or exc}"
            ) from exc
        except CommandError as exc:
            found = current_revision(engine)
            if found is None or found <= HEAD_REVISION:
                raise
            raise LedgerError(
                f"the ledger at {engine.url.render_as_string()} has schema revision {found}, "
                f"newer than this ometer's {HEAD_REVISION}: a newer ometer wrote it. Upgrade "
                "ometer (pip install -U ollama-meter) on this machine too, or give another "
                "ledger with --db / OMETER_DB_URL"
            ) from exc


def ensure_current(engine: Engine) -> bool:
    """Migrate when the ledger is behind; True when a migration ran."""
    if current_revision(engine) == HEAD_REVISION:
        return False
    upgrade(engine)
    return True
