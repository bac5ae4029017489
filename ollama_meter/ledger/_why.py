"""Why a SQLite ledger file could not be opened or written, in words a user can act on.

SQLite's own ("unable to open database file", "disk I/O error") name neither the file nor
the cause; these look at the file system once the driver has failed, never before.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import resource
import shlex
import sqlite3
import stat
from pathlib import Path

from ollama_meter._paths import first_bytes

ROOM_BYTES = 1 << 20
"""Free space below which a disk counts as full: SQLite grows the ledger's shared-memory
file 32 KiB at a time and its WAL a page at a time, so a disk with a few blocks left
fails them as surely as one with none."""


def unwritable(path: Path) -> str:
    """Why SQLite could not open or write the ledger file at ``path``, and what to do: its
    own words ("unable to open database file") name neither."""
    if path.is_dir():
        return (
            f"{path} is a folder, not a ledger file; give a file's path, e.g. {path / 'ledger.db'}"
        )
    if kept := kept_from(path):
        return kept
    folder = path.parent
    if not folder.is_dir():  # made when the ledger was opened: removed since (rm -rf)
        return f"the folder {folder} is gone (removed while ometer had the ledger open?)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return read_only_folder(path)
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            found = file.stat()
        except OSError:
            continue
        if found.st_uid == os.geteuid() and not found.st_mode & stat.S_IWUSR:
            # This user's own file, made read-only (chmod a-w): giving it to the user, as
            # said below, changes nothing.
            return (
                f"{file} is read-only (mode {stat.S_IMODE(found.st_mode):o}), though this "
                f"user owns it: make it writable (chmod u+w {shlex.quote(str(file))})"
            )
    if full := full_disk(path):  # no inode for the -wal and -shm SQLite makes beside it
        return full
    if kept := side_file_kept(path):
        return kept
    if (refused := _refused_new_file(path)) is not None:
        return (
            f"no file can be made at {path} ({refused}): give a ledger in a folder on a disk "
            "this user may write, e.g. /var/lib/ometer/ledger.db"
        )
    return (
        f"this user may not write the ledger file {path} or its -wal and -shm files: give "
        "them to this user (chown), or run ometer as their owner"
    )


def read_only_folder(path: Path) -> str:
    """What to say of the ledger at ``path`` in a folder this process may not write.

    Refused on purpose, to readers too (export, backup, reports): SQLite opens a ledger in
    WAL mode only with its ``-shm`` (and ``-wal``) beside it, made there by the first process
    to open it, and cannot make them. ``?mode=ro`` needs them there already;
    ``?immutable=1`` reads without them but trusts that nothing writes the file meanwhile,
    and ignores the transactions a ``-wal`` holds: true of a read-only mount alone, and
    opening a ledger writes besides (its id, the schema, a journal left by a killed
    process). A copy in a writable folder is read with none of that doubt."""
    folder = path.parent
    try:
        mounted = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        mounted = False
    why = "is on a read-only file system" if mounted else "is read-only to this user"
    fix = "remount it read-write" if mounted else "make the folder writable"
    if not os.path.lexists(path):
        return f"the folder {folder} {why}: {fix}, or give a ledger in a folder ometer may write"
    return (
        f"the folder {folder} {why}, and SQLite opens a ledger, even to read it, only with its "
        "-wal and -shm files beside it, which it cannot make there: to record into it, "
        f"{fix}; to read it (export, backup, reports), copy it to a folder ometer may write "
        f"({_copy_command(path)}) and give the copy with --db sqlite:////tmp/ledger.db"
    )


def _copy_command(path: Path) -> str:
    """The shell command that copies the ledger at ``path`` (and its WAL, holding committed
    calls, when there is one) to /tmp/ledger.db."""
    quoted = shlex.quote(str(path))
    command = f"cp {quoted} /tmp/ledger.db"
    if _holds(Path(f"{path}-wal")):
        command += f" && cp {quoted}-wal /tmp/ledger.db-wal"
    return command


def _holds(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _refused_new_file(path: Path) -> str | None:
    """Why the folder of ``path``, where no file is yet, takes no new file, in the system's
    words; None when it does (the file made to find out is removed). Its permissions alone
    do not tell: /proc and /sys let root in and take no file from anyone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile (another process's first call): not this case
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return None


def side_file_kept(path: Path) -> str | None:
    """What to say when the ``-wal`` or ``-shm`` beside the ledger at ``path`` is a file this
    user may not write (another user's process made it), else None: which, whose, and how
    to give them back. Given, never removed: a WAL holds committed calls."""
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    for file in (wal, shm):
        try:
            found = file.stat()
        except OSError:
            continue
        if os.access(file, os.R_OK | os.W_OK):
            continue
        return (
            f"{file} belongs to {_who(found.st_uid)} (group {_group(found.st_gid)}, mode "
            f"{stat.S_IMODE(found.st_mode):o}), and this user may not write it: give it and "
            f"{shm if file == wal else wal} to the ledger's owner, as root: chown "
            f"--reference={shlex.quote(str(path))} {shlex.quote(str(wal))} "
            f"{shlex.quote(str(shm))}"
        )
    return None


def _who(uid: int) -> str:
    with contextlib.suppress(KeyError):
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    return f"uid {uid}"


def _group(gid: int) -> str:
    with contextlib.suppress(KeyError):
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    return f"gid {gid}"


def kept_from(path: Path) -> str | None:
    """What to say when the ledger file at ``path`` is another user's that this one may not
    write (a service user's ledger, its group's to read), else None. Said before the folder:
    with a gateway running its -wal and -shm are there, and a writable folder changes nothing."""
    try:
        found = path.stat()
    except OSError:
        return None
    if found.st_uid == os.geteuid() or os.access(path, os.W_OK):
        return None
    quoted = shlex.quote(str(path))
    whose = (
        f"(owner {_who(found.st_uid)}, group {_group(found.st_gid)}, "
        f"mode {stat.S_IMODE(found.st_mode):o})"
    )
    me = _who(os.geteuid())
    if not os.access(path, os.R_OK):
        return (
            f"this user, {me}, may neither read nor write the ledger file {path} {whose}: run "
            "this as its owner, or give it to a group this user is in (chgrp, then chmod g+rw "
            f"{quoted} and its folder)"
        )
    said = (
        f"this user, {me}, may read the ledger file {path} but not write it {whose}: run this "
        f"as its owner, or give its group write (chmod g+w {quoted} and its folder)"
    )
    if not Path(f"{path}-shm").exists():
        said += (
            "; no ometer has it open, and even reading it needs its -shm and -wal files, which "
            "this user would leave its own, keeping the owner from writing the ledger: a "
            "report works while a gateway has the ledger open, or on a copy in a folder this "
            f"user may write ({_copy_command(path)}, then --db sqlite:////tmp/ledger.db)"
        )
    return said


def emptied(path: Path) -> str | None:
    """What to say of the ledger file at ``path`` when it holds no table at all, else None:
    its tables are not missing for a change by hand, it was emptied (and made a database
    again by the process's next connection, which switches it to WAL)."""
    try:
        uri = f"{path.absolute().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return None
    except sqlite3.Error:
        return None
    return empty_file(path)


def empty_file(path: Path) -> str:
    """What to say of the ledger file at ``path`` that holds nothing at all (``: > ledger.db``,
    a truncate, a copy that wrote nothing)."""
    return (
        f"the ledger file {path} is empty: what it held is gone. Restore it from a backup "
        "(`ometer db backup FILE` makes one), or run `ometer db upgrade` to make a new ledger "
        "of it"
    )


def is_empty(path: Path) -> bool:
    """Whether the regular file at ``path`` holds no byte, and no WAL beside it does either.

    Read, not its size asked: a file of /proc says 0 bytes and holds more (opening it as a
    ledger says what it is)."""
    try:
        if first_bytes(path, 1):
            return False
        return not Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return True  # no WAL (the file itself was there)
    except OSError:
        return False  # unreadable: opening it says why


def full_disk(path: Path) -> str | None:
    """What to do when the disk holding the ledger ``path`` is (as good as) full, else None.

    On a full disk SQLite fails to grow the ``-shm`` file beside a ledger it opens and says
    "disk I/O error" (SQLITE_IOERR_SHMSIZE), which reads as a failing disk; only a new
    ledger's first write says "database or disk is full". With no inode free (bytes to spare)
    it cannot make the ``-wal``, ``-shm`` or ``-journal`` and says "unable to open database
    file".
    """
    folder = path.parent
    try:
        disk = os.statvfs(folder)
    except OSError:
        return None
    if disk.f_files and not disk.f_favail:  # f_files 0: a file system that counts no inodes
        return (
            f"the disk that holds {folder} has no room for another file (each of its "
            f"{disk.f_files:,} inodes is in use, though it may have bytes to spare): remove "
            "files there, or give the ledger a disk with inodes free"
        )
    if disk.f_blocks == 0 or disk.f_bavail * disk.f_frsize >= ROOM_BYTES:
        return None  # f_blocks 0: a file system of no disk (/proc), never full
    return f"the disk that holds {folder} is full: free some disk space"


def file_limit(path: Path, said: str | None = None) -> str | None:
    """What to do when ``path`` (the ledger, its WAL or rollback journal beside it) has
    reached this process's file size limit, else None.

    A write past ``ulimit -f`` (``LimitFSIZE=`` in a systemd unit, a container's or a shared
    host's limits) fails with EFBIG, which SQLite says as "disk I/O error": read as a failing
    disk, on a disk with room to spare. ``said``: the file's name for the user (default: the
    ledger's, by its file name).
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit == resource.RLIM_INFINITY:
        return None
    for end in ("", "-wal", "-journal"):
        try:
            size = Path(f"{path}{end}").stat().st_size
        except OSError:
            continue
        if size + ROOM_BYTES > limit:  # a page, or a WAL frame, from it: the write failed
            name = said or f"the ledger's {path.name}{end}"
            return (
                f"this process may write no file past {limit / 1e6:,.1f} MB (its file size "
                f"limit: ulimit -f, or LimitFSIZE= in a systemd unit), and {name} has reached "
                "it: raise or remove the limit for ometer"
            )
    return None


_MISSING = re.compile(r'FATAL:\s+(database|role) ".*" does not exist')
"""A PostgreSQL server's refusal of a connection to a database, or for a user, it has not
(a typo in the URL, a database dropped under a running gateway)."""

_NAMED = {
    "database": (
        "database",
        "create it (CREATE DATABASE name ENCODING 'UTF8' TEMPLATE template0) or correct the "
        "database's name in OMETER_DB_URL",
    ),
    "role": ("user", "create it (CREATE ROLE name LOGIN) or correct the user in OMETER_DB_URL"),
}


def no_such(said: str, user: str | None) -> str | None:
    """What to do when a PostgreSQL server has no database, or no user, of the URL's name,
    or will not let ``user`` in to it (``said``: its refusal), else None."""
    if missing := _MISSING.search(said):
        what, fix = _NAMED[missing[1]]
        return f"no {what} of that name on this server: {fix}"
    return _kept_out(said, user)


_NO_LOGIN = re.compile(r'FATAL:\s+role "(.*)" is not permitted to log in')
_NO_CONNECT = re.compile(r'FATAL:\s+permission denied for database "(.*)"')


def _kept_out(said: str, user: str | None) -> str | None:
    """What to do when a PostgreSQL server will not let ``user`` in (``said``: its refusal):
    a role that may not log in, or one without CONNECT on the database; else None."""
    if found := _NO_LOGIN.search(said):
        return (
            f"the user may not log in (NOLOGIN: a group role, or one locked out); let it "
            f"(ALTER ROLE {found[1]} LOGIN), or name a user that may in OMETER_DB_URL"
        )
    if found := _NO_CONNECT.search(said):
        return (
            f"the user {user} has no CONNECT on this database; give it (GRANT CONNECT ON "
            f"DATABASE {found[1]} TO {user}, as its owner), or name a user that has it in "
            "OMETER_DB_URL"
        )
    return None


_DENIED_ON = re.compile(r"permission denied for (table|sequence) (\S+)")


def not_allowed(said: str, user: str | None) -> str:
    """What to do when PostgreSQL refused ``user`` a privilege (``said``: its words): on a
    table of the ledger (a REVOKE under a running gateway, or tables another user made), the
    GRANT that gives it back; else (CREATE on a schema, for a new ledger) who may make it."""
    if found := _DENIED_ON.search(said):
        return (
            f"the user {user} lacks a privilege on the ledger's {found[1]} {found[2]} (revoked, "
            f"or made by another user); give it back (GRANT SELECT, INSERT, UPDATE, DELETE ON "
            f"ALL TABLES IN SCHEMA ... TO {user}), or use the tables' owner in OMETER_DB_URL"
        )
    return (
        f"the user {user} may not do this; grant it what it needs, or run `ometer db upgrade` "
        "once as the database's owner"
    )
