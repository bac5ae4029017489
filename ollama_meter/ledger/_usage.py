"""Whether a PostgreSQL role may use the schema its search path puts the ledger in.

A schema the role has no USAGE on drops out of the search path without a word: no
``current_schema()``, every table "does not exist", a new table "no schema has been selected
to create in". ``REVOKE USAGE ON SCHEMA public FROM PUBLIC`` is a least-privilege site's first
step, and a role given the ledger's tables but not their schema was told the search path had
been moved, that the schema did not exist, or that the schema had been changed by hand.
Asked only once something has failed (or no ledger was found), never on the way of a call.
"""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ollama_meter.ledger._sqlstates import NO_SCHEMA

_FIRST_SCHEMA = text(
    "SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE'), current_user "
    "FROM unnest(string_to_array(current_setting('search_path'), ',')) "
    "WITH ORDINALITY AS p(entry, at) "
    "CROSS JOIN LATERAL (SELECT (parse_ident(btrim(p.entry), false))[1] AS name) AS i "
    "JOIN pg_namespace n ON n.nspname = "
    "CASE WHEN i.name = '$user' THEN current_user::text ELSE i.name END "
    "ORDER BY p.at LIMIT 1"
)
"""The first schema of the session's search path that exists (``$user`` read as the role's
name, as the server does), whether the role may use it, and the role."""


def usage_problem(engine: Engine) -> str | None:
    """What to do when the role of ``engine``'s sessions may not use the schema its search
    path puts the ledger in (no USAGE); None when it may, on SQLite, or when the server
    cannot say."""
    if engine.dialect.name != "postgresql":
        return None
    try:
        with engine.connect() as conn:
            found = conn.execute(_FIRST_SCHEMA).first()
    except DBAPIError:
        return None
    if found is None or found[1]:
        return None
    schema, user = found[0], found[2]
    return (
        f"the user {user} may not use schema {schema}, where its search path puts the ledger "
        "(it has no USAGE on it: revoked, or never granted); give it (GRANT USAGE ON SCHEMA "
        f"{schema} TO {user}, as the schema's owner), or name a user that has it in OMETER_DB_URL"
    )


def schema_unseen(engine: Engine, state: str | None) -> str | None:
    """What to do when a statement found no table of the ledger, or no schema to make one in
    (SQLSTATE ``state``), because its role may not use the schema, or none is named; None
    when neither (a table, column or index changed by hand)."""
    if unusable := usage_problem(engine):  # its tables hidden: not changed by hand
        return unusable
    if state == NO_SCHEMA:
        return (
            "the search path (?options=-csearch_path%3D... in OMETER_DB_URL, or the user's own) "
            "names no schema that exists; make it (CREATE SCHEMA name) as the database's owner, "
            "or correct the URL"
        )
    return None
