"""A PostgreSQL role that may not use the ledger's schema (no USAGE on it): a least-privilege
site's first step is ``REVOKE USAGE ON SCHEMA public FROM PUBLIC``, and a role given its
tables (GRANT SELECT, INSERT ... ON ALL TABLES) but not the schema sees none of them.

PostgreSQL drops such a schema from the search path without a word: the ledger in ``public``
was said to be a search path moved by a DBA, and with the URL naming ``public`` a schema
that does not exist (``CREATE SCHEMA``, for one that is there)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.ledger import Ledger
from ollama_meter.records import Stored
from tests.factories import make_span


def _role_on(url: str, *, usage: bool, tables: bool) -> tuple[str, str]:
    """A new login role on the database at ``url``, given its tables (``tables``) and schema
    ``public`` (``usage``), with PUBLIC's USAGE on ``public`` revoked; its name and URL."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text("REVOKE USAGE ON SCHEMA public FROM PUBLIC"))
        if tables:
            conn.execute(
                text(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
                )
            )
            conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        if usage:
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    admin.dispose()
    return role, make_url(url).set(username=role).render_as_string(False)


def _no_usage(role: str) -> str:
    return (
        f"the user {role} may not use schema public, where its search path puts the ledger "
        "(it has no USAGE on it: revoked, or never granted); give it (GRANT USAGE ON SCHEMA "
        f"public TO {role}, as the schema's owner), or name a user that has it in OMETER_DB_URL"
    )


def _schemas_with_tables(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT DISTINCT schemaname FROM pg_tables WHERE schemaname NOT IN "
                "('pg_catalog', 'information_schema') ORDER BY 1"
            )
        ).scalars()
        schemas = list(found)
    engine.dispose()
    return schemas


@pytest.mark.parametrize("named", [False, True], ids=["bare", "search-path-in-url"])
def test_a_ledger_in_a_schema_the_user_may_not_use_says_to_grant_usage(
    cli: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    """Bare, the error said the role's search path was moved (``ALTER ROLE ... RESET
    search_path``, which changes nothing); with ``?options=-csearch_path%3Dpublic``, that
    the schema does not exist and to make it."""
    Ledger(pg_url, zone="UTC").record([make_span()])
    role, url = _role_on(pg_url, usage=False, tables=True)
    given = f"{url}?options=-csearch_path%3Dpublic" if named else url
    monkeypatch.setenv("OMETER_DB_URL", given)
    for command in (["report", "--period", "2026-11"], ["db", "upgrade"]):
        result = cli(*command)
        assert (result.code, result.stdout) == (1, ""), result.stderr
        shown = make_url(given).render_as_string()
        assert result.stderr == f"error: cannot open the ledger at {shown}: {_no_usage(role)}\n"
    assert _schemas_with_tables(pg_url) == ["public"]  # nothing made elsewhere
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    admin.dispose()
    assert cli("report", "--period", "2026-11").code == 0


def test_a_new_ledger_in_a_schema_the_user_may_not_use_says_to_grant_usage(
    cli: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new database whose ``public`` the role may not use: PostgreSQL's "no schema has been
    selected to create in" was said as a search path naming no schema that exists."""
    role, url = _role_on(pg_url, usage=False, tables=False)
    monkeypatch.setenv("OMETER_DB_URL", url)
    result = cli("db", "upgrade")
    assert (result.code, result.stdout) == (1, ""), result.stderr
    assert result.stderr == f"error: cannot open the ledger at {url}: {_no_usage(role)}\n"
    assert _schemas_with_tables(pg_url) == []


def test_usage_revoked_under_a_running_ledger_is_named_as_its_spans_spool(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoked under a running gateway, every write failed with "relation ... does not
    exist", said as a schema changed by hand (restore it from a backup)."""
    Ledger(pg_url, zone="UTC").record([make_span()])
    role, url = _role_on(pg_url, usage=True, tables=True)
    ledger = Ledger(url, spool_dir=tmp_path / "spool")
    assert set(ledger.record([make_span()]).values()) == {Stored.COMMITTED}
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"REVOKE USAGE ON SCHEMA public FROM {role}"))
    span = make_span()
    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        assert ledger.record([span]) == {span.id: Stored.SPOOLED}
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"does not exist: {_no_usage(role)}; spans wait in the spool meanwhile" in said, said
    with admin.connect() as conn:
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    admin.dispose()
    after = make_span()
    assert ledger.record([after]) == {after.id: Stored.COMMITTED}
    assert ledger.count() == 4 and ledger.spool.pending() == []
    ledger.dispose()


def _shadowing_role(pg_url: str, *, like: bool) -> tuple[str, str]:
    """A role whose search path is ``app, public`` on the ledger's database, where schema
    ``app`` holds another application's ``spans`` table (the ledger's columns when
    ``like``); its name and URL."""
    role, url = _role_on(pg_url, usage=True, tables=True)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE SCHEMA app"))
        shape = "(LIKE public.spans INCLUDING ALL)" if like else "(id text PRIMARY KEY, note text)"
        conn.execute(text(f"CREATE TABLE app.spans {shape}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA app TO {role}"))
        conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA app TO {role}"))
        conn.execute(text(f"ALTER ROLE {role} SET search_path = app, public"))
    admin.dispose()
    return role, url


SHADOWED = (
    "the search path (app, public) finds the ledger's table spans in schema app, not in the "
    "ledger's own schema public (another application's table of that name, or a copy), and "
    "ometer would read and write it there; name the ledger's schema alone in OMETER_DB_URL "
    "(?options=-csearch_path%3Dpublic), or put public first in the search path"
)


@pytest.mark.parametrize("like", [True, False], ids=["same-columns", "other-columns"])
def test_a_search_path_finding_another_schemas_spans_first_is_refused(
    cli: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, like: bool
) -> None:
    """A shared database whose role's search path is ``app, public``, schema ``app`` another
    application's with a ``spans`` table of its own: every span went to ``app.spans`` while
    its rollups went to ``public`` (a later ``db rollup`` dropped the calls from every
    report), or, its columns other, each command said the ledger's schema had been changed
    by hand and to restore it from a backup."""
    Ledger(pg_url, zone="UTC").record([make_span()])
    _, url = _shadowing_role(pg_url, like=like)
    monkeypatch.setenv("OMETER_DB_URL", url)
    for command in (["report", "--period", "2026-11"], ["log"], ["budget", "status"]):
        result = cli(*command)
        assert (result.code, result.stdout) == (1, ""), result.stderr
        assert result.stderr == f"error: cannot open the ledger at {url}: {SHADOWED}\n"
    with create_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app.spans")).scalar() == 0
    named = f"{url}?options=-csearch_path%3Dpublic"
    assert cli("log", "--db", named).code == 0
