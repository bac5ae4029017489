"""Whether a PostgreSQL role's search path finds the ledger: in a schema it may use, every
table in the ledger's own schema.

A schema the role has no USAGE on drops out of the search path without a word: no
``current_schema()``, every table "does not exist", a new table "no schema has been selected
to create in". ``REVOKE USAGE ON SCHEMA public FROM PUBLIC`` is a least-privilege site's first
step, and a role given the ledger's tables but not their schema was told the search path had
been moved, that the schema did not exist, or that the schema had been changed by hand.

A search path of two schemas (``app, public``: a shared database) whose first holds another
application's table of a ledger table's name (``spans``) had each unqualified statement find
that one: spans written there while their rollups went to the ledger, or, its columns other,
every command saying the ledger's schema had been changed by hand.
Asked as a process opens a ledger, and once something has failed; never on the way of a call.
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


_FOUND_IN = text(
    "SELECT t.name, n.nspname, current_setting('search_path') "
    "FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, at) "
    "JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name)) "
    "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY t.at"
)
"""The schema the search path finds each named table in (none: not found), the first the
ledger's revision table."""


def shadowed(engine: Engine) -> str | None:
    """What to do when the search path of ``engine``'s sessions finds a table of the ledger
    in another schema than the ledger's own (its ``alembic_version``'s); None when it finds
    each there, on SQLite, or when the server cannot say."""
    from ollama_meter.ledger.models import METADATA

    if engine.dialect.name != "postgresql":
        return None
    names = ["alembic_version", *sorted(METADATA.tables)]
    try:
        with engine.connect() as conn:
            found = conn.execute(_FOUND_IN, {"names": names}).all()
    except DBAPIError:
        return None
    if not found or found[0][0] != "alembic_version":
        return None
    home, path = found[0][1], found[0][2]
    other = next(((name, schema) for name, schema, _ in found if schema != home), None)
    if other is None:
        return None
    return (
        f"the search path ({path}) finds the ledger's table {other[0]} in schema {other[1]}, "
        f"not in the ledger's own schema {home} (another application's table of that name, "
        "or a copy), and ometer would read and write it there; name the ledger's schema alone "
        f"in OMETER_DB_URL (?options=-csearch_path%3D{home}), or put {home} first in the "
        "search path"
    )


def schema_unseen(engine: Engine, state: str | None) -> str | None:
    """What to do when a statement found no table of the ledger, or no schema to make one in
    (SQLSTATE ``state``), because its role may not use the schema, or none is named; None
    when neither (a table, column or index changed by hand)."""
    if unusable := usage_problem(engine) or shadowed(engine):  # not changed by hand
        return unusable
    if state == NO_SCHEMA:
        return (
            "the search path (?options=-csearch_path%3D... in OMETER_DB_URL, or the user's own) "
            "names no schema that exists; make it (CREATE SCHEMA name) as the database's owner, "
            "or correct the URL"
        )
    return None
