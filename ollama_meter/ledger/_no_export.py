"""Input to ``ometer db import`` that is no export, or no export's line: what it is, and
what to do with it, said where JSON's own words ("invalid character (byte 0)") would say
neither. Pure functions of bytes; the import (``_jsonl``) asks them once a line is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator

from ollama_meter._kinds import SQLITE, WAL_MAGIC, packed
from ollama_meter.errors import ValidationError
from ollama_meter.ledger._line import MAX_LINE_BYTES, CutShort

_ARRAY = re.compile(rb"\[\s*(?:[{\]]|$)")
"""How a JSON array of spans begins: `ometer log --json`'s ``[`` alone on its line, ``jq -c
-s``'s ``[{``. A TOML table (``[[rule]]``) is no JSON at all."""

_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""Bytes no text holds (C0 controls but tab, line feed and carriage return)."""

_TOML = re.compile(r"\[\[?\s*[\w\"'.-]+\s*\]\]?\s*(?:#.*)?|[\w\"'.-]+\s*=.*|#(?!!).*")
"""A line of TOML: a table's header (``[[rule]]``), a key and its value, or a comment (not
a script's ``#!``)."""

_BEGINS = 60
"""Characters of a line a message shows."""

_READ = 4096
"""Bytes of a line read as text: enough to show it, or to know a line of TOML."""


def not_a_span(line: bytes, name: str) -> str | None:
    """What ``line`` is when it is no JSON object (nor an array of them) at all: a pricing
    file, a CSV report, a program; None for one that begins as JSON does.

    Each was refused in JSON's words: "invalid character (byte 0)" (read as a NUL byte), a
    JSON array to run jq on (``[[rule]]``), or text saved in another encoding to convert with
    iconv (a program, a ledger's ``-shm``): no fix of the line or its encoding makes a span.
    """
    head = line.lstrip()
    if head.startswith(b"{") or _ARRAY.match(head) or len(line) > MAX_LINE_BYTES:
        return None  # (one too long is refused as such, whatever it holds)
    if control := _CONTROL.search(line):
        at = control.start()
        what = f"binary, not text (byte {at + 1} is 0x{line[at]:02X}, which no text holds)"
    else:
        text = line[:_READ].decode(errors="replace").strip()
        shown = repr(text[:_BEGINS]) + ("..." if len(text) > _BEGINS else "")
        what = f"text that begins {shown}"
        if len(line) <= _READ and _TOML.fullmatch(text):
            what += (
                f": a pricing file (TOML) goes in with ometer pricing import {shlex.quote(name)}"
            )
    return (
        "not a span: each line of an export is one span as a JSON object "
        f'({{"id": ...}}, as ometer db export writes it), and this line is {what}'
    )


def not_utf8(line: bytes, name: str) -> str | None:
    """What to do with a line that is not UTF-8 (an export edited and saved as Windows-1252
    or Latin-1: `é` as the one byte E9), which JSON's "Invalid UTF-8 encoded string" did not
    say; None for one that is."""
    try:
        line.rstrip(b"\r\n").decode()
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # a character cut in two: a line cut short
            return None
        return (
            f"byte {exc.start + 1} (0x{line[exc.start]:02X}) is not UTF-8: export lines are "
            "UTF-8 text, and this file was saved in another encoding. Convert it, naming the one "
            f"it was saved in (iconv -f WINDOWS-1252 -t UTF-8 {shlex.quote(name)} | ometer db "
            "import -), and import again"
        )
    return None


def spread(line: bytes, exc: ValueError, name: str) -> str | None:
    """What is wrong with ``line`` when it is JSON that spreads spans over lines (``ometer log
    --json``'s array, ``jq .``'s objects): that, and how to make it lines, not a line to fix."""

    def made_lines(jq: str) -> str:
        return f"(jq -c {shlex.quote(jq)} {shlex.quote(name)} | ometer db import -)"

    if line.lstrip().startswith(b"["):
        return (
            "a JSON array, not a span: an export gives each span on a line of its own, as an "
            f"object; `ometer log --json` prints them as an array {made_lines('.[]')}"
        )
    if isinstance(exc, CutShort):
        return (
            "the span goes on past the end of the line: an export gives each span whole on "
            f"one line, not spread over several as jq . prints it {made_lines('.')}, and one "
            "cut short ends so too (import a whole export)"
        )
    return None


def without_bom(lines: Iterable[bytes], name: str = "FILE") -> Iterator[bytes]:
    """``lines`` without the UTF-8 byte order mark editors put first; a ValidationError
    naming what the file is when it is no export's text, which no line of it would say: a
    UTF-16 file (PowerShell's ``>``), a packed export, a ledger's SQLite file, lines ended
    with CR alone."""
    rest = iter(lines)
    first = next(rest, b"")
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValidationError(
            "line 1: the file is UTF-16 (its byte order mark says so); export lines are UTF-8: "
            "convert it (iconv -f UTF-16 -t UTF-8) and import again"
        )
    if found := packed(first):
        what, unpack = found
        raise ValidationError(
            f"line 1: the file is {what}: {unpack} {shlex.quote(name)} | ometer db import -"
        )
    if first.startswith(SQLITE):
        raise ValidationError(
            "line 1: the file is a SQLite database (a ledger or its backup), not an export: "
            f"export it (ometer db export --db {shlex.quote(f'sqlite:///{name}')}) and import that"
        )
    if first[:4] in WAL_MAGIC:
        raise ValidationError(
            "line 1: the file is a SQLite write-ahead log (a ledger's -wal file), not an export: "
            "export the ledger it belongs to (ometer db export --db sqlite:///LEDGER) and "
            "import that"
        )
    if b"}\r{" in first:  # JSON strings hold no raw CR: it ends one span's line
        raise ValidationError(
            "line 1: the file ends its lines with CR alone (classic Mac OS), not LF: convert it "
            f"(tr '\\r' '\\n' < {shlex.quote(name)} | ometer db import -) and import again"
        )
    yield first.removeprefix(b"\xef\xbb\xbf")
    yield from rest
