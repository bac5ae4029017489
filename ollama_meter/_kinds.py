"""What a file is by its first bytes, when it is not the text a command wanted to read.

A ledger, its WAL or a packed file given where an export or a pricing file goes: each
command names what it got and what to do, rather than what the bytes failed as. Pure
functions of bytes: no I/O here (``_paths.first_bytes`` reads them).
"""

from __future__ import annotations

SQLITE = b"SQLite format 3\x00"
"""What a SQLite database's first bytes are."""

WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
"""What a SQLite write-ahead log's first bytes are (its header's magic number)."""

PACKED = {
    b"\x1f\x8b": ("gzip-compressed", "zcat"),
    b"BZh": ("bzip2-compressed", "bzcat"),
    b"\xfd7zXZ\x00": ("xz-compressed", "xzcat"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "zstdcat"),
    b"PK\x03\x04": ("a zip archive", "unzip -p"),
}
"""What a packed file starts with: what it is, and the command that writes it unpacked."""


def sqlite_kind(head: bytes) -> str | None:
    """Which SQLite file ``head`` begins ("a SQLite database (...)"), or None."""
    if head.startswith(SQLITE):
        return "a SQLite database (a ledger, or a backup of one)"
    if head[:4] in WAL_MAGIC:
        return "a SQLite database's write-ahead log"
    return None


def packed(head: bytes) -> tuple[str, str] | None:
    """What packed file ``head`` begins, and the command that unpacks it; or None."""
    for magic, found in PACKED.items():
        if head.startswith(magic):
            return found
    return None
