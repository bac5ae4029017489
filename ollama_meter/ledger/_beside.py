"""Folders and files ometer makes beside a ledger (its spool, the journal, the quarantine, a new
ledger file), made for whoever keeps the ledger, not only for whoever ran ``ometer``.

A shared ledger is kept by one user (the service user ``ometer serve`` runs as) in its folder;
root, or an admin in its group, runs ``ometer`` on it too. The spool folder root made on its
first metered call was root's, 0700: the gateway's next busy write could not be spooled, so it
held the span in memory and refused every call, and its journal was off. So, for the folder a
thing is made in (never for one that was there: a file's owner chose its mode):

- made by root, it takes that folder's owner and group (only root may give a file away);
- a folder made where the folder's group may write (a team folder, ``chmod 2770``; not a
  sticky ``/tmp`` every user writes) takes that group (as the setgid bit would) and lets it
  write too. The spool's files stay their owner's alone (0600), as another user's spool
  files are left for it (``Spool.drain``).

Best effort: what cannot be given is left as made, and the write that needs it says why.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ollama_meter._paths import first_bytes, resolved
from ollama_meter.ledger._mounts import mounted_alone
from ollama_meter.ledger._why import kept_from


def make_folder(path: Path) -> None:
    """``mkdir -p path`` (OSError as it raises), each folder it makes shaped as the module says."""
    missing: list[Path] = []
    at = path
    while not os.path.lexists(at) and at.parent != at:
        missing.append(at)
        at = at.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OSError(exc.errno, _in_the_way(path) or exc.strerror, exc.filename) from None
    for folder in reversed(missing):
        _shape(folder)


def _in_the_way(path: Path) -> str | None:
    """What stands where a folder of ``path`` is to be, in words: the system says "File exists"
    of a link to a folder not there (one moved, or on a disk not mounted)."""
    for at in (path, *path.parents):
        if not os.path.lexists(at) or os.path.isdir(at):
            continue
        if not os.path.islink(at):
            return f"{at} is a file, not a folder"
        return (
            f"{at} links to {os.readlink(at)}, not there (not made yet, or on a disk not mounted)"
        )
    return None


def _shape(folder: Path) -> None:
    try:
        parent = os.stat(folder.parent)
        # Through a descriptor of the folder itself, never its name: the folder it is made in
        # is another user's to rename in, and root changing a link put there changes the
        # link's target (/etc).
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        made = os.fstat(fd)
        if made.st_uid != os.geteuid():
            return  # another process's, made meanwhile
        team = parent.st_mode & stat.S_IWGRP and not parent.st_mode & stat.S_IWOTH
        with contextlib.suppress(OSError):
            if os.geteuid() == 0 and (made.st_uid, made.st_gid) != (parent.st_uid, parent.st_gid):
                os.fchown(fd, parent.st_uid, parent.st_gid)
            elif team and made.st_gid != parent.st_gid:  # no setgid bit: this user's group
                os.fchown(fd, -1, parent.st_gid)
        with contextlib.suppress(OSError):
            if team and not made.st_mode & stat.S_IWGRP:
                os.fchmod(fd, stat.S_IMODE(made.st_mode) | stat.S_IRWXG)
    finally:
        os.close(fd)


def give_to_folder(fd: int, folder: Path) -> None:
    """Give the file open at ``fd``, just made in ``folder``, to the folder's owner and group
    when this process is root; its mode stays as made."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        found = os.stat(folder)
        os.fchown(fd, found.st_uid, found.st_gid)


_SQLITE_WAL = (b"SQLite format 3\x00", b"\x02\x02")
"""A WAL database's header: its first 16 bytes, and its bytes 18 and 19."""


def _is_wal_database(path: Path) -> bool:
    try:
        header = first_bytes(path, 20)  # not open(): its close drops this process's locks
    except OSError:
        return False
    return header.startswith(_SQLITE_WAL[0]) and header[18:20] == _SQLITE_WAL[1]


def other_names(path: Path) -> str | None:
    """Why the ledger file at ``path`` must not be opened, else None: it has more than one name
    (a hard link), or is mounted on its own. SQLite keeps the ``-wal`` and ``-shm`` beside the
    name it opened, so two
    processes opening the file by two names each kept a WAL of their own, neither saw the
    other's calls, and the last to checkpoint wrote its pages over the other's (calls gone,
    and ``integrity_check`` said ok)."""
    try:
        names = os.stat(path).st_nlink
    except OSError:
        return None  # none yet: SQLite makes it (with one name)
    if names < 2:
        return mounted_alone(path)
    return (
        f"the file has {names} names (hard links, as `ln` without -s makes): SQLite keeps a "
        "ledger's WAL beside the name it is opened by, so processes opening it by two names "
        "miss each other's calls and write over them. Keep one name: remove the others "
        f"(find / -xdev -samefile {path}), and link to it with `ln -s` instead"
    )


def reading_alone(path: Path) -> str | None:
    """Why this user must not open the WAL ledger at ``path``, else None: it may read it but
    not write it, and no process has it open (no ``-shm``). SQLite made the ``-wal`` and
    ``-shm`` this reader's, of the ledger's mode (0640), and could not remove them (a reader
    checkpoints nothing): every write of the ledger's owner was refused from then on, the
    gateway spooling each call, for good. In a folder this user may not write (a read-only
    mount too) SQLite makes nothing and fails; what it says is explained then (``_why``)."""
    if os.access(path, os.W_OK) or os.path.lexists(f"{path}-shm") or not path.exists():
        return None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return None
    return kept_from(path) if _is_wal_database(path) else None


def wal_files_like(path: Path) -> None:
    """Make the ``-wal`` and ``-shm`` files of the WAL ledger at ``path`` where there are none,
    with the ledger's group and mode (and owner, made by root), before SQLite makes them.

    SQLite gives them the ledger's mode but this process's group (and, but for root, its
    owner): an admin of the ledger's group (umask 077, a folder without the setgid bit) who
    opened it first left them its own group's, and the service user could not open the
    ledger while they stayed (a killed ``ometer report`` left them for good). Empty files
    are what SQLite makes of them itself. Never beside a file that is not a WAL database
    (another app's file is refused, never changed)."""
    try:
        found = os.stat(path)
    except OSError:
        return
    if not _is_wal_database(path):
        return
    for end in ("-wal", "-shm"):
        try:
            fd = os.open(f"{path}{end}", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0)
        except OSError:
            continue  # there already (SQLite's to use), or not to be made here (SQLite says why)
        try:
            with contextlib.suppress(OSError):  # a group this user is not in: kept as made
                os.fchown(fd, found.st_uid if os.geteuid() == 0 else -1, found.st_gid)
            os.fchmod(fd, stat.S_IMODE(found.st_mode) & 0o666)  # SQLite's too (an empty file)
        finally:
            os.close(fd)


def make_private(path: Path) -> None:
    """Make the ledger file at ``path`` if there is none, for its owner and its group as far as
    the umask lets it (0660 under a team folder's 002, 0640 under 027 or 022, 0600 under 077),
    never for every user of the machine: SQLite made it 0644 under the usual umask 022, and it
    holds everyone's spend and, with content capture on, every prompt and reply. (It was 0600
    whenever the group could not write: an admin of the group, which 027 lets read, could
    not.) Its ``-wal`` and ``-shm`` files take its mode from SQLite. A file that is there, or
    one that cannot be made here, is left to SQLite as it was (it says what is wrong)."""
    path = opened_by_sqlite(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o660)
    except OSError:
        return
    try:
        give_to_folder(fd, path.parent)
    finally:
        os.close(fd)


def opened_by_sqlite(path: Path) -> Path:
    """The file SQLite opens for ``path``: the one its links name, even one not made yet (SQLite
    makes it there, and keeps its ``-wal`` and ``-shm`` beside it, not beside the link).
    ``path`` itself for links that loop: SQLite says it cannot open the file."""
    try:
        return resolved(path)
    except OSError:
        return path
