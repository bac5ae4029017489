"""The spool: where spans wait when the database cannot take them, so none is lost.

If the ledger stays locked or unreachable past every retry, the spans of that
write go to a JSON-lines file (written to a temp name, fsynced, renamed). The
same process records them once a write succeeds again, and any process that
opens the ledger does too. Recording is idempotent, so a crash between
recording and deleting a file only repeats a no-op.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ollama_meter.meter.span import SpanRecord

_TIMES = ("started_at", "ended_at")


def _encode(span: SpanRecord) -> str:
    row = span.as_row()
    for key in _TIMES:
        if row[key] is not None:
            row[key] = row[key].isoformat()
    return json.dumps(row, ensure_ascii=False)


def _decode(line: str) -> SpanRecord:
    row: dict[str, Any] = json.loads(line)
    for key in _TIMES:
        if row.get(key) is not None:
            row[key] = datetime.fromisoformat(row[key])
    return SpanRecord(**row)


class Spool:
    """A folder of JSON-lines files, one per failed write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, spans: Sequence[SpanRecord]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{spans[0].id}.jsonl"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            handle.writelines(_encode(span) + "\n" for span in spans)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(final)
        return final

    def pending(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.jsonl"))
        except OSError:
            return []

    def drain(self, record: Callable[[list[SpanRecord]], None]) -> int:
        """Record every spooled span with ``record``; returns how many were recorded."""
        recorded = 0
        for path in self.pending():
            try:
                spans = [
                    _decode(line) for line in path.read_text(encoding="utf-8").splitlines() if line
                ]
            except (OSError, ValueError, TypeError):
                continue  # unreadable: leave it for a human rather than lose it
            record(spans)
            path.unlink(missing_ok=True)
            recorded += len(spans)
        return recorded
