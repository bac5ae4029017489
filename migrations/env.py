"""Alembic environment: runs on a connection handed over by ometer, or opens one itself."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from ollama_meter.ledger._engine import create_ledger_engine
from ollama_meter.ledger._migrate import check_is_ledger, check_whole_numbers, lock_for_schema
from ollama_meter.ledger.models import METADATA

config = context.config


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Take the write lock before reading the version, so a second process waits
        # for the first one's migration instead of repeating it.
        connection.execution_options(sqlite_begin="IMMEDIATE")
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=sqlite,
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        lock_for_schema(connection)
        # Under the lock: what another process migrated meanwhile is a ledger, not a stranger.
        known = {script.revision for script in context.script.walk_revisions()}
        found = context.get_context().get_current_revision()
        check_is_ledger(connection, found, known)
        if found is not None and found != context.script.get_current_head():
            check_whole_numbers(connection)  # what the migrations' rollups would misread
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if url:
        return url
    from ollama_meter.config import load_settings

    return load_settings().ledger_url


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=METADATA, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_ledger_engine(_url())
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
