"""Where a ledger's spool (and the journal and quarantine in it) is, when not told: beside a
SQLite file, in the user data dir for a server's database. Owns only the folder's name and
bringing along a folder named as an older ometer named it; what goes in it is the spool's."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from ollama_meter._paths import default_data_dir, resolved
from ollama_meter.ledger._beside import make_folder
from ollama_meter.ledger._engine import sqlite_path
from ollama_meter.ledger._session import settings_in, url_options

log = logging.getLogger("ollama_meter.ledger")

_SERVER_KEYS = ("host", "hostaddr", "port", "dbname", "service")
"""URL query keys that say which server and database (the rest say how to log in or talk)."""


def default_spool_dir(url: str) -> Path:
    """Beside a SQLite file; in the user data dir, per database, for servers.

    A server's folder is named after the database it holds spans for: its backend,
    host, port and name, not the user, password, driver or options, which are what
    gets fixed after an outage (a wrong password, an expired user); spans spooled
    under the old URL are then recorded by the process started with the new one.

    A SQLite file's folder is named after the file its path names, through any link: one
    ledger opened through a link and through its target had two folders, and a killed
    gateway's journal and spooled spans were recorded only by a process that opened the
    ledger through the same path.
    """
    parsed = make_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        return _beside_file(path)
    query = {k: v for k, v in parsed.query.items() if k in _SERVER_KEYS}
    schema = search_path_in(parsed)
    if schema is not None:  # which ledger of the database: two schemas are two ledgers
        query["search_path"] = schema
    database = URL.create(
        parsed.get_backend_name(),
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=query,
    )
    digest = hashlib.sha256(database.render_as_string().encode()).hexdigest()[:16]
    folder = default_data_dir() / "spool" / digest
    # Spools from before were named after the whole URL: bring this URL's along, once.
    legacy = folder.with_name(hashlib.sha256(url.encode()).hexdigest()[:16])
    if legacy != folder and legacy.is_dir() and not folder.exists():
        with contextlib.suppress(OSError):  # another process moved it first
            legacy.rename(folder)
    return folder


def _beside_file(path: Path) -> Path:
    """The spool folder of the SQLite file at ``path``: beside the file it names. A folder
    named after ``path`` itself (a link), as ometer named it before, is brought along."""
    given = path.with_name(f"{path.name}.spool")
    try:
        file = resolved(path)
    except OSError:  # links that loop name no file: opening the ledger says so
        return given
    folder = file.with_name(f"{file.name}.spool")
    if not given.is_dir() or _same(given, folder):
        return folder
    if not folder.exists():
        with contextlib.suppress(OSError):  # across file systems; or another process did
            given.rename(folder)
    if not folder.exists():
        # It cannot be moved (the link and its file on two file systems): the folder named
        # after the file becomes a link to it instead, so that a process opening the file
        # directly uses the same folder; and where that cannot be made either, this process
        # keeps using the old one, so that none of the spans spooled there is orphaned.
        try:
            folder.symlink_to(given.absolute(), target_is_directory=True)
        except OSError:
            return folder if folder.exists() else given
    if given.is_dir() and not _same(given, folder):
        _bring_files(given, folder)  # both there: a process opening the file spooled first
    return folder


def _same(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def _bring_files(old: Path, folder: Path) -> None:
    """Move the files of ``old`` (spool files, journals, the quarantine) to the same places in
    ``folder``, each renamed whole; a name taken there already stays behind. A journal's live
    writer keeps writing into its file (renamed, the same file), and holds its lock."""
    left = 0
    for source in sorted(old.rglob("*"), reverse=True):  # files before their folders
        target = folder / source.relative_to(old)
        try:
            if source.is_dir() and not source.is_symlink():
                source.rmdir()  # once empty
                continue
            if not os.path.lexists(target):
                make_folder(target.parent)
                source.rename(target)
                continue
        except FileNotFoundError:  # another process moved it first
            continue
        except OSError:
            pass
        left += os.path.lexists(source) and not source.is_dir()
    with contextlib.suppress(OSError):
        old.rmdir()
    if left:
        log.warning(
            "%d file(s) in %s (the spool folder of the ledger named after a link to it) could "
            "not be moved to its spool folder %s: move them there by hand, with no ometer "
            "running, so that they are recorded",
            left,
            old,
            folder,
        )


def search_path_in(url: URL) -> str | None:
    """The ``search_path`` a server URL's ``?options=`` sets, None when it sets none."""
    return settings_in(url_options(url)).get("search_path")
