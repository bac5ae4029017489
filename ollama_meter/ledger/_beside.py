"""Folders and files ometer makes beside a ledger (its spool, the journal, the quarantine, a new
ledger file), made for whoever keeps the ledger, not only for whoever ran ``ometer``.

A shared ledger is kept by one user (the service user ``ometer serve`` runs as) in its folder;
root, or an admin in its group, runs ``ometer`` on it too. The spool folder root made on its
first metered call was root's, 0700: the gateway's next busy write could not be spooled, so it
held the span in memory and refused every call, and its journal was off. So, for the folder a
thing is made in (never for one that was there: a file's owner chose its mode):

- made by root, it takes that folder's owner and group (only root may give a file away);
- a folder made where the folder's group may write (a team folder, ``chmod 2770``; not a
  sticky ``/tmp`` every user writes) lets its group write too. The spool's files stay their
  owner's alone (0600), as a reader's spool files are left for it (``Spool.drain``).

Best effort: what cannot be given is left as made, and the write that needs it says why.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def make_folder(path: Path) -> None:
    """``mkdir -p path`` (OSError as it raises), each folder it makes shaped as the module says."""
    missing: list[Path] = []
    at = path
    while not os.path.lexists(at) and at.parent != at:
        missing.append(at)
        at = at.parent
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):
        _shape(folder)


def _shape(folder: Path) -> None:
    try:
        parent = os.stat(folder.parent)
        made = os.lstat(folder)
    except OSError:
        return
    if not stat.S_ISDIR(made.st_mode) or made.st_uid != os.geteuid():
        return  # another process's, made meanwhile
    with contextlib.suppress(OSError):
        if os.geteuid() == 0 and (made.st_uid, made.st_gid) != (parent.st_uid, parent.st_gid):
            os.chown(folder, parent.st_uid, parent.st_gid, follow_symlinks=False)
        team = parent.st_mode & stat.S_IWGRP and not parent.st_mode & stat.S_IWOTH
        if team and not made.st_mode & stat.S_IWGRP:
            os.chmod(folder, stat.S_IMODE(made.st_mode) | stat.S_IRWXG)


def give_to_folder(fd: int, folder: Path) -> None:
    """Give the file open at ``fd``, just made in ``folder``, to the folder's owner and group
    when this process is root; its mode stays as made."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        found = os.stat(folder)
        os.fchown(fd, found.st_uid, found.st_gid)
