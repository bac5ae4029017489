"""``ometer db ...``: the ledger itself: schema, rollups, export and import, retention, backup."""

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from ollama_meter.cli._common import (
    DbOption,
    SinceOption,
    UntilOption,
    file_to_write,
    ledger_as_is,
    must_exist,
    progress_bar,
    settings,
)
from ollama_meter.cli._console import err, named, out, write_all
from ollama_meter.cli._files import stdin_bytes
from ollama_meter.cli._stopped import said_if_stopped, tallied
from ollama_meter.errors import LedgerError, OmeterError, ValidationError
from ollama_meter.periods import window_between

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger

app = typer.Typer(help="The ledger database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_command(db: DbOption = None) -> None:
    """Apply pending migrations (also done automatically on first use)."""
    from ollama_meter.ledger import HEAD_REVISION, check_tables, current_revision, open_ledger

    cfg = settings(db_url=db)
    ledger = open_ledger(cfg.ledger_url, migrate=False, wait=cfg.ledger_wait)
    with ledger.failures_named():
        before = current_revision(ledger.engine)
    # Opened as every process opens it: migrated, and the rollups a migration asked for
    # built now (the long part on a big ledger), not by the first gateway started next.
    ledger_as_is(cfg)
    with ledger.failures_named():
        check_tables(ledger.engine)
    # Named now, by its owner: a gateway whose role may not write ledger_meta cannot name it,
    # and its ometer clients' calls are counted twice until it is (gateway/_ledger_name.py).
    with contextlib.suppress(LedgerError):
        ledger.identity()
    if before == HEAD_REVISION:
        out.print(f"ledger at {named(ledger.display_url)} is up to date (revision {HEAD_REVISION})")
    else:
        out.print(f"ledger at {named(ledger.display_url)}: {before or 'empty'} → {HEAD_REVISION}")


@app.command("path")
def path_command(db: DbOption = None) -> None:
    """Print the ledger's location: the SQLite file, or the database URL without its password."""
    from ollama_meter.ledger import ledger_place

    place, there = ledger_place(settings(db_url=db).ledger_url)  # opening it makes its folder
    out.print(named(place))
    if not there:
        err.print(
            "note: there is no ledger there yet: the first metered call, or `ometer db upgrade`, "
            "makes it"
        )


@app.command("rollup")
def rollup_command(
    zone: Annotated[
        str | None,
        typer.Option(
            "--zone",
            help="Begin day and month rollups at this zone's midnight from now on (IANA name; "
            "default: keep the ledger's zone). Stop gateways while it runs.",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Rebuild the rollups from raw spans (after a bulk load outside ometer).

    Days before the prune horizon keep their rollups: their raw spans are gone.
    """
    from ollama_meter.ledger import check_pages, rebuild

    cfg = settings(db_url=db)
    ledger = ledger_as_is(cfg, existing=True)  # a typo must not make an empty ledger
    check_pages(
        ledger,
        "nothing was rebuilt: a rebuild that met the damaged page would stop half way, and "
        "every ometer command would then stop at it, finishing that rebuild",
    )
    began = time.monotonic()
    with tallied(
        "rolling up days",
        lambda days: (
            f"stopped after rolling up {days:,} day(s), each whole; the next ometer command to "
            "open the ledger finishes the rest (or run ometer db rollup again)"
        ),
    ) as tally:
        count = rebuild(
            ledger.write, ledger.read, progress=tally.add, planned=tally.plan, zone=zone
        )
    took = time.monotonic() - began
    out.print(
        f"rolled up {count:,} span(s) in {took:.1f} s; days begin at {ledger.zone()} midnight"
    )


@app.command("export")
def export_command(
    since: SinceOption = None,
    until: UntilOption = None,
    db: DbOption = None,
) -> None:
    """Write spans as JSON lines (one span per line, as `ometer log --json` shows them)."""
    from ollama_meter.ledger import SpanFilter, export_lines, unbounded

    cfg = settings(db_url=db)
    ledger = ledger_as_is(cfg, existing=True)
    start = end = None
    if since is not None or until is not None:  # given empty: refused, not "everything"
        # No --until is no end, not today's: a span the clock put later (a gateway whose
        # clock runs ahead) moves with the rest, as it does with neither option. Its window
        # is --since's day, whose end is not used: an --until of its own (the last UTC day)
        # was refused as before a later local --since, naming an option no one gave.
        last = since if until is None else until
        window = window_between(since, last, tz=cfg.tz, now=datetime.now(UTC))
        start, end = window.start, None if until is None else window.end
    sink = sys.stdout.buffer
    count = 0
    # a page of a big ledger may take longer than a call's write
    # The bar only where the lines go elsewhere: drawn among them it would cut into them.
    shown = not out.is_terminal and err.is_terminal
    with unbounded(), progress_bar("exporting", shown=shown) as bar:
        counted = ledger.count(SpanFilter(since=start, until=end)) if shown else None
        task = bar.add_task("spans", total=counted)
        for line in export_lines(ledger, since=start, until=end):
            write_all(sink, line)  # a line of a span with content may pass the buffer
            count += 1
            if not count % 1000:
                bar.update(task, completed=count)
        bar.update(task, completed=count)
    sink.flush()
    err.print(f"exported {count:,} span(s)")
    horizon = ledger.pruned_before()
    if horizon is not None and (start is None or start < horizon):
        err.print(
            f"warning: raw spans that started before {horizon:%Y-%m-%d %H:%M} UTC were pruned: "
            "those days are kept only as rollups, which an export does not carry, so a ledger "
            "this export is imported into has no calls before then (keep this ledger or a "
            "backup of it for their reports)"
        )


class _Unreadable(Exception):
    """The import's input failed to read (a failing disk, an NFS file gone stale, a device)."""


def _counted(stream: BinaryIO, advance: Callable[[int], object]) -> Iterator[bytes]:
    """The stream's lines, telling ``advance`` how many bytes went by every megabyte or so
    (the bar moves as often as the eye can see; per line it cost more than the parsing).
    A read that fails is :class:`_Unreadable`, not an OSError: that would be taken for
    output that cannot be written, or for a bug."""
    from ollama_meter.ledger import MAX_LINE_BYTES

    read = lines = 0
    # A line longer than any export's is cut at the limit (and refused), not read whole.
    readline = functools.partial(stream.readline, MAX_LINE_BYTES + 1)
    while True:
        try:
            line = readline()
        except OSError as exc:
            raise _Unreadable(f"after line {lines:,}: {exc.strerror or exc}") from None
        if not line:
            break
        lines += 1
        read += len(line)
        if read >= 1 << 20:
            advance(read)
            read = 0
        yield line
    advance(read)


@app.command("import")
def import_command(
    source: Annotated[str, typer.Argument(help="A file of JSON lines, or - for stdin.")],
    pruned_too: Annotated[
        bool,
        typer.Option(
            "--pruned-too",
            help="Also add spans that started before the prune horizon. Only for spans this "
            "ledger never had (another ledger's): its own pruned spans are in its rollups "
            "already and would count twice.",
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Load spans from JSON lines (an `ometer db export`); spans already there are skipped."""
    from ollama_meter.ledger import import_lines

    if not source:  # "$EXPORT" unset: not the current folder ("Is a directory")
        raise ValidationError(
            "'' is no file name: give the export's file (ometer db import FILE), or - to read "
            "it from stdin"
        )
    cfg = settings(db_url=db)
    stream: BinaryIO
    if source == "-":
        stream = stdin_bytes("export", "ometer db import", "ometer db export | ometer db import -")
        total = None
    else:
        path = Path(source)
        try:
            stream, total = path.open("rb"), path.stat().st_size
        except OSError as exc:
            raise OmeterError(f"cannot read {source}: {exc.strerror}") from None
        except ValueError:  # a NUL, which no file name holds
            raise ValidationError(f"cannot read {source!r}: a file name holds no NUL") from None
    began = time.monotonic()
    with stream, progress_bar("importing", rate=True) as bar:
        task = bar.add_task("bytes", total=total)
        recorded = [0]  # spans of the batches committed so far
        opened: list[Ledger] = []  # the ledger, once a span was ready for it
        with said_if_stopped(
            lambda: (
                f"the first {recorded[0]:,} span(s) are recorded, the batch in progress is "
                "not; run the same import again for the rest (spans already there are skipped)"
            )
        ):
            try:
                # Opened once a span is ready: input refused at once leaves no new ledger.
                summary = import_lines(
                    functools.partial(_opened, opened, cfg),
                    _counted(stream, lambda n: bar.advance(task, n)),
                    pruned_too=pruned_too,
                    progress=lambda n: recorded.__setitem__(0, recorded[0] + n),
                    name="FILE" if source == "-" else source,
                    content=cfg.capture_content,
                )
            except _Unreadable as exc:
                raise OmeterError(
                    f"cannot read {'stdin' if source == '-' else source} {exc}; the first "
                    f"{recorded[0]:,} span(s) are recorded, the batch in progress is not: run the "
                    "same import again once it reads (spans already there are skipped)"
                ) from None
    took = max(time.monotonic() - began, 1e-9)
    if not opened:  # nothing in the input: nothing is made at the target either
        from ollama_meter.ledger import ledger_place

        place, there = ledger_place(cfg.ledger_url)
        holds = f"{'stdin' if source == '-' else source} holds none"
        if there:
            out.print(f"imported 0 span(s) into {named(place)}: {holds}")
        else:
            out.print(f"imported 0 span(s): {holds}; no ledger made at {named(place)}")
        return
    out.print(
        f"imported {summary.added:,} span(s) into {named(opened[0].display_url)}"
        f" ({summary.present:,} already there) in {took:.1f} s, {summary.read / took:,.0f} spans/s"
    )
    if summary.pruned and summary.horizon is not None:
        err.print(
            f"skipped {summary.pruned:,} span(s) that started before {summary.horizon:%Y-%m-%d %H:%M}"
            " UTC, where this ledger's raw spans were pruned: the ones it had are in its rollups "
            "already. Spans it never had (another ledger's) go in with --pruned-too"
        )


def _opened(opened: "list[Ledger]", cfg: "Settings") -> "Ledger":
    """The ledger to import into, opened (made, if need be) and kept in ``opened``."""
    opened.append(ledger_as_is(cfg))
    return opened[0]


@app.command("prune")
def prune_command(
    keep_days: Annotated[
        int, typer.Option("--keep-days", min=1, help="Keep raw spans of the last N days.")
    ],
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="SQLite: rewrite an older file once so freed space goes back to the disk.",
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Remove raw spans older than N days; rollups stay, so reports do not change."""
    from ollama_meter.ledger import prune

    cfg = settings(db_url=db)
    ledger = ledger_as_is(cfg, existing=True)
    with tallied(
        "pruning",
        lambda removed: (
            f"stopped after removing {removed:,} span(s) older than {keep_days} day(s), the "
            "piece in progress not; reports do not change (rollups stay): run the same prune "
            "again for the rest"
        ),
    ) as tally:
        result = prune(
            ledger,
            keep_days,
            vacuum=vacuum,
            progress=tally.add,
            planned=tally.plan,
        )
    out.print(
        f"removed {result.removed:,} span(s) started before {result.cutoff:%Y-%m-%d %H:%M} UTC; "
        f"{_mb(result.reclaimed)} back to the disk ({_mb(result.bytes_before)} → "
        f"{_mb(result.bytes_after)})"
    )
    if note := result.clock_note(keep_days):
        err.print(note)
    if result.wal_bytes:
        err.print(
            f"the ledger's WAL ({named(ledger.path)}-wal) holds {_mb(result.wal_bytes)} of it "
            "while another process reads the ledger as it was before the prune (an export, a "
            "backup): the space goes back to the disk at the first write after that read ends"
        )
    if result.free_bytes and ledger.path is not None:
        err.print(
            f"{_mb(result.free_bytes)} is free inside the file for new spans; "
            "`ometer db prune --vacuum` gives it back to the disk (rewrites the file once)"
        )
    elif ledger.path is None:
        err.print("PostgreSQL reuses the space itself (autovacuum); VACUUM FULL shrinks the files")


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


@app.command("backup")
def backup_command(
    target: Annotated[
        Path,
        typer.Argument(help="The file to write the copy to.", parser=file_to_write("ledger.db")),
    ],
    db: DbOption = None,
) -> None:
    """Copy the live ledger to FILE (SQLite; prints the pg_dump command for PostgreSQL)."""
    from ollama_meter.ledger import backup, open_ledger, pg_dump_command

    cfg = settings(db_url=db)
    must_exist(cfg, default_too=True)  # nothing to copy, and a typo must make nothing
    # As it is, not migrated first: the copy taken before an upgrade is the one to go back to.
    ledger = open_ledger(cfg.ledger_url, migrate=False)
    if ledger.path is None:
        out.print(pg_dump_command(ledger, target))
        raise ValidationError(
            "ometer backs up SQLite ledgers; for PostgreSQL run the pg_dump command above "
            "(its password from PGPASSWORD or ~/.pgpass)"
        )
    began = time.monotonic()
    with progress_bar("copying", unit=" pages") as bar:
        task = bar.add_task("pages", total=None)
        size = backup(
            ledger,
            target,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    out.print(
        f"backed up {named(ledger.display_url)} to {named(target)}: {_mb(size)} in {time.monotonic() - began:.1f} s"
    )
