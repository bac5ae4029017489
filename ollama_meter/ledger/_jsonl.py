"""Spans in and out of a ledger as JSON lines: ``ometer db export`` and ``import``.

A span's JSON is what ``ometer log --json`` shows (:func:`span_to_dict`), one
object per line; import reads the same lines back into the same span (``_line``
checks every field: a bad line is refused with its number, never stored
half-right), and records them through the ordinary write path: idempotent by id,
rollups included, days before the prune horizon left alone.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import os
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ollama_meter._text import json_bytes
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._deadline import bulk
from ollama_meter.ledger._line import CutShort, span_from_line
from ollama_meter.ledger._no_export import not_a_span, not_utf8, spread, without_bom
from ollama_meter.ledger._span_rows import row_to_span
from ollama_meter.ledger._spans import SpanFilter, insert_spans, select_spans
from ollama_meter.ledger.models import SPANS
from ollama_meter.records import (
    LABEL_FIELDS,
    SpanRecord,
    format_micros,
    make_storable,
)

if TYPE_CHECKING:
    from ollama_meter.ledger._ledger import Ledger

log = logging.getLogger("ollama_meter.ledger")


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def span_to_dict(span: SpanRecord) -> dict[str, Any]:
    """A span as ``ometer log --json`` prints it: times in UTC ISO 8601, money as strings.

    ``prompt`` and ``reply`` appear only when content capture stored them.
    """
    data = {
        "id": span.id,
        "started_at": iso_utc(span.started_at),
        "ended_at": iso_utc(span.ended_at) if span.ended_at else None,
        "tenant": span.tenant,
        "department": span.department,
        "user": span.user,
        "tags": span.tags,
        "model": span.model,
        "request_model": span.request_model,
        "response_model": span.response_model,
        "operation": span.operation,
        "source": span.source,
        "stream": span.stream,
        "status": span.status,
        "error_type": span.error_type,
        "error_message": span.error_message,
        "http_status": span.http_status,
        "done_reason": span.done_reason,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "token_source": span.token_source,
        "cost": format_micros(span.cost_total),
        "cost_parts": {
            "tokens": format_micros(span.cost_tokens),
            "compute": format_micros(span.cost_compute),
            "energy": format_micros(span.cost_energy),
            "fee": format_micros(span.cost_fee),
        },
        "currency": span.currency,
        "unpriced": span.unpriced,
        "price_rule_id": span.price_rule_id,
        "durations_ns": span.durations(),
        "duration_source": span.duration_source,
        "upstream_host": span.upstream_host,
        "trace_id": span.trace_id,
        "otel_span_id": span.span_id,
    }
    for key in ("prompt", "reply"):
        if (content := getattr(span, key)) is not None:
            data[key] = content
    return data


# -- export ------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_LABEL_VALUES = operator.attrgetter(*sorted(LABEL_FIELDS))


def export_line(span: SpanRecord) -> bytes:
    """The span as one line of an export, its newline included."""
    return json_bytes(_ENCODER.encode(span_to_dict(span))) + b"\n"


def save_unrecorded(spans: Sequence[SpanRecord], where: str) -> None:
    """Spans that ``where`` (the ledger and its spool) would not take as a process ends: saved
    to a file in the temporary folder, named with its ``ometer db import`` in an ERROR line;
    with no file either, each span's export line goes to the log."""
    lines = b"".join(export_line(span) for span in spans)
    try:
        fd, name = tempfile.mkstemp(prefix="ometer-unrecorded-", suffix=".jsonl")
        with os.fdopen(fd, "wb") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        log.error(
            "%d span(s) could be written neither to %s nor to a file (%s); each is a line "
            "below: save them to a file and run `ometer db import FILE` once the ledger can "
            "be written, or these calls go unrecorded",
            len(spans), where, exc,
        )  # fmt: skip
        for line in lines.splitlines():
            log.error("%s", line.decode())
        return
    log.error(
        "%d span(s) could not be written to %s; they were saved in %s: run `ometer db "
        "import %s` once the ledger can be written, or these calls go unrecorded",
        len(spans), where, name, shlex.quote(name),
    )  # fmt: skip


def export_lines(
    ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None
) -> Iterator[bytes]:
    """Every span started in [since, until) as one JSON line each, oldest first.

    One read transaction streams them (a consistent snapshot, however long it takes;
    writers are not blocked), a few at a time when they hold large prompts and replies. A span an older ometer kept with, say, an escape in its
    model name is given as the meter stores spans today (``make_storable``), so it still
    imports.
    """
    where = SpanFilter(since=since, until=until)
    # Ties in start time by id: the same spans give the same lines from any ledger, whatever
    # order each stored them in.
    order = (SPANS.c.id,) if since is None and until is None else (SPANS.c.started_at, SPANS.c.id)
    with ledger.read() as conn:
        query = select_spans().where(*where.clauses(conn)).order_by(*order)
        result = conn.execution_options(stream_results=True).execute(query)
        size = 16  # rows a fetch holds: up to 2,000 while their lines stay within BATCH_BYTES
        while rows := result.fetchmany(size):
            held = 0
            for row in rows:
                span = row_to_span(row)
                if not "".join(filter(None, _LABEL_VALUES(span))).isprintable():
                    make_storable(span)
                line = export_line(span)
                held += len(line)
                yield line
            if held > BATCH_BYTES:  # captured calls of a million characters each
                size = max(1, size // 2)
            elif held * 2 < BATCH_BYTES:
                size = min(2000, size * 2)


# -- import ------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    read: int = 0
    added: int = 0
    pruned: int = 0
    """Lines skipped because their spans started before the prune horizon and the ledger
    does not hold them (see :func:`import_lines`): a span given twice, twice."""
    horizon: datetime | None = None

    @property
    def present(self) -> int:
        """Spans the ledger already had (an import run again, or lines given twice)."""
        return self.read - self.added - self.pruned


BATCH_SPANS = 2_000
"""Spans one import transaction holds: on SQLite it holds the write lock throughout, and a
gateway beside the import waits for it (20,000 held it for seconds, past
OMETER_LEDGER_WAIT, and the gateway's calls went to the spool). Smaller batches cost no
speed that stood out: an import's time is in Python, per span."""

BATCH_BYTES = 32 * 2**20
"""Lines one import batch (and one line more), or about one export fetch, holds: 20,000 spans
of captured calls with a million-character prompt each would be 20 GB in memory. Spans
without content (a kilobyte or so a line) fill a batch by its count first."""


@bulk
def import_lines(
    ledger: Ledger | Callable[[], Ledger],
    lines: Iterable[bytes],
    *,
    batch: int = BATCH_SPANS,
    progress: Callable[[int], None] | None = None,
    pruned_too: bool = False,
    name: str = "FILE",
    content: bool = True,
) -> ImportSummary:
    """Record the spans of export ``lines``; spans already in the ledger are skipped.

    ``content`` False (content capture off where the import runs): a line holding a prompt or
    reply is refused as a bad line is, saying how to keep the text or leave it out, since the
    ledger then holds no call's text (``ometer db import`` passes the setting).

    So are spans that started before the prune horizon, unless ``pruned_too``: the
    ledger no longer has the raw spans of those days, only their rollups, so it cannot
    tell whether a span there is one it pruned (counted already: an export imported
    back) or one it never had (another ledger's). Every write holds spans to that rule
    (:func:`~ollama_meter.ledger._spans.insert_spans`); the import counts those it skips.

    Each batch (``batch`` spans, or fewer whose lines reach :data:`BATCH_BYTES`) is one
    transaction (spans and rollups together). A bad line stops the
    import with its number; what came before it is recorded, so the same command
    runs again after the line is fixed. ``name`` is the file's, for a message that says
    what to run on it. ``ledger`` may be a function that opens it: called once the first
    batch is ready, so input refused before that (a UTF-16 file, an array) makes no ledger.
    """
    with _fewer_collections():
        return _import(
            ledger, lines, batch, progress, pruned_too=pruned_too, name=name, content=content
        )


GC_YOUNG = 20_000
"""Objects the garbage collector lets be made between two looks at the young ones, during
an import (700 unless set): a batch makes hundreds of thousands (its spans, its rollup rows),
and at 700 the collector's looks at them took a tenth of the import's time; they hold no
cycles, and the collector still runs, only less often."""


class _FewerCollections:
    """The collector's young threshold at :data:`GC_YOUNG` or more while imports run (in
    any thread), as it was once the last of them ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.young = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            if not self.running:
                self.young, *older = gc.get_threshold()
                gc.set_threshold(max(self.young, GC_YOUNG), *older)
            self.running += 1
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                if not self.running:
                    gc.set_threshold(self.young, *gc.get_threshold()[1:])


_fewer_collections = _FewerCollections()


def _import(
    ledger: Ledger | Callable[[], Ledger],
    lines: Iterable[bytes],
    batch: int,
    progress: Callable[[int], None] | None,
    *,
    pruned_too: bool,
    name: str,
    content: bool,
) -> ImportSummary:
    summary = ImportSummary()
    pending: list[SpanRecord] = []
    held = 0  # bytes of the lines in pending

    def flush() -> None:
        nonlocal held, ledger
        held = 0
        if pending:
            if callable(ledger):
                ledger = ledger()
            try:
                with ledger.write() as conn:
                    # Spans before the prune horizon the ledger does not hold are left out,
                    # as every write leaves them (insert_spans): counted, not kept.
                    done = insert_spans(conn, pending, pruned_too=pruned_too)
                summary.added += len(done.added)
                if done.early:  # by lines, as across batches: its line twice is skipped twice
                    early = {span.id for span in done.early}
                    summary.pruned += sum(span.id in early for span in pending)
                summary.horizon = done.horizon or summary.horizon
            except LedgerError as exc:  # the batch is rolled back whole: running again is safe
                raise LedgerError(
                    f"{exc}; the {summary.read:,} span(s) before this batch are recorded: run "
                    "the same import again once it answers (spans already there are skipped)"
                ) from exc
            summary.read += len(pending)
            if progress is not None:
                progress(len(pending))
            pending.clear()

    for number, raw in enumerate(without_bom(lines, name), start=1):
        # exports saved with a BOM and concatenated (cat a.jsonl b.jsonl): one mid-file
        line = raw.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            span = span_from_line(line)
        except ValueError as exc:
            flush()
            if said := not_a_span(line, name):  # a pricing file, a CSV, a program
                raise ValidationError(
                    f"line {number}: {said}; the {summary.read} span(s) before it are recorded "
                    "(spans already there are skipped)"
                ) from None
            if isinstance(exc, CutShort) and not raw.endswith(b"\n"):  # the file's last line
                raise ValidationError(
                    f"line {number}: the file ends part way through this span (an export cut "
                    "short: a full disk, a stopped export, a copy still being written); the "
                    f"{summary.read} span(s) before it are recorded: import a whole export "
                    "(spans already there are skipped)"
                ) from None
            if encoded := not_utf8(line, name):
                raise ValidationError(
                    f"line {number}: {encoded}; the {summary.read} span(s) before it are "
                    "recorded (spans already there are skipped)"
                ) from None
            if spread_over := spread(line, exc, name):
                raise ValidationError(
                    f"line {number}: {spread_over}; the {summary.read} span(s) before it are "
                    "recorded: import the spans one a line (spans already there are skipped)"
                ) from None
            raise ValidationError(
                f"line {number}: {exc}; the {summary.read} span(s) before it are recorded, "
                "fix the line and import again (spans already there are skipped)"
            ) from None
        if not content and (span.prompt is not None or span.reply is not None):
            flush()
            raise ValidationError(
                f"line {number}: holds a call's prompt or reply text, which this ledger keeps "
                "only with content capture on (OMETER_CAPTURE_CONTENT=true), and it is off here; "
                f"the {summary.read} span(s) before it are recorded. To keep the text, import "
                "again with OMETER_CAPTURE_CONTENT=true; to leave it out, import jq -c "
                f"'del(.prompt, .reply)' {shlex.quote(name)} | ometer db import - (spans already "
                "there are skipped)"
            )
        pending.append(span)
        held += len(line)
        if len(pending) >= batch or held >= BATCH_BYTES:
            flush()
    flush()
    return summary
