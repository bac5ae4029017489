"""What the mount table (Linux's ``/proc/self/mountinfo``) says of a SQLite ledger's file: that
it is mounted on its own, or kept on a network file system. Either lets processes that do not
share one WAL write the same file. Reads the table only; where there is none, it says nothing."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("ollama_meter.ledger")

_NETWORK = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "ocfs2", "gfs2", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.rclone",
    "fuse.cephfs", "fuse.davfs", "davfs",
})  # fmt: skip
"""File systems several machines mount at once. SQLite's WAL index is shared memory, which
processes of one machine share and processes of two cannot."""
_OCTAL = re.compile(rb"\\([0-7]{3})")
_said: set[Path] = set()


def _table() -> list[tuple[bytes, bytes]]:
    """(where mounted, file system type) of each mount, in the table's order; [] with no table."""
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields, _, after = line.partition(b" - ")  # the 5th field: where, with \040 for a blank
        where, kind = fields.split(b" "), after.split(b" ")
        if len(where) > 4 and kind[0]:
            mounts.append((_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), where[4]), kind[0]))
    return mounts


def mounted_alone(path: Path) -> str | None:
    """Why the file at ``path``, mounted on its own (``mount --bind``, ``docker run -v FILE:``),
    must not be opened as a ledger, else None: it is another name of a file whose own folder is
    elsewhere, and its WAL is kept apart from its folder's (a container's went with it)."""
    name = os.fsencode(path)
    if any(where == name for where, _ in _table()):
        return (
            f"the file is mounted on its own at {path} (mount --bind, or docker run -v "
            "FILE:...): SQLite keeps a ledger's WAL beside the name it is opened by, so the "
            "processes on each side miss each other's calls and write over them, and a "
            "container's WAL goes with the container. Mount the ledger's folder instead"
        )
    return None


def network_kind(path: Path) -> str | None:
    """The network file system ``path`` is on (``nfs4``), None for one of this machine's."""
    name, found = os.fsencode(path), (b"", b"")
    for where, kind in _table():  # the longest mount holding it; of equals, the later
        inside = name == where or name.startswith(where.rstrip(b"/") + b"/")
        if inside and len(where) >= len(found[0]):
            found = (where, kind)
    named = os.fsdecode(found[1])
    return named if named in _NETWORK else None


def warn_network(path: Path) -> None:
    """Say, once a process, that the SQLite ledger at ``path`` is on a network file system: a
    home folder on NFS holds the default ledger, and ``ometer`` run on two machines of it wrote
    one file through two WAL indexes, each writing over the other's calls."""
    if path in _said or not (kind := network_kind(path.parent)):
        return
    _said.add(path)
    log.warning(
        "the ledger %s is on a network file system (%s): SQLite keeps it whole only while "
        "every process using it runs on one machine, and ometer on another machine using it "
        "(a shared home folder) would write over this one's calls. Give each machine a ledger "
        "of its own (OMETER_DB_URL), or share a PostgreSQL ledger",
        path,
        kind,
    )
