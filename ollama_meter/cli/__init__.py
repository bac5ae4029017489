"""The ``ometer`` command line: thin commands that parse, call the library, and render.

Only this package imports typer and rich. Each module holds one command or one
sub-app; errors the user can fix become one line on stderr and an exit code.

Start-up is kept short: a command module imports at its top only what its options
need (typer builds ``--help`` from them); settings, the ledger, the meter and the
Ollama client load in the command that uses them (``bench/startup.py`` measures it).
Modules with commands do without ``from __future__ import annotations``: typer reads
every command's signature on every run, and string annotations would be compiled and
evaluated each time (building the commands took three times as long).
"""

import contextlib
import errno
import io
import logging
import os
import re
import sys
from functools import cache
from typing import Any, NoReturn

import typer

from ollama_meter._logging import configure_logging
from ollama_meter._names import whole_number
from ollama_meter._stops import take_over
from ollama_meter._version import __version__
from ollama_meter.cli import (
    budget,
    chargeback,
    chat,
    db,
    demo,
    keys,
    limit,
    log,
    perf,
    pricing,
    report,
    run,
    serve,
)
from ollama_meter.cli._common import settings
from ollama_meter.cli._console import Diagnostics, err, escape_unencodable, out, printable
from ollama_meter.cli._hints import shown as quoted
from ollama_meter.cli._settings import run_ended, run_started
from ollama_meter.errors import OmeterError
from ollama_meter.ledger._deadline import recording_nothing

app = typer.Typer(
    name="ometer",
    help="Meter, price and charge back every Ollama call.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},  # every command's, inherited
)
app.command("chat")(chat.chat)
app.command("log")(log.log)
app.command("report")(report.report)
app.command("perf")(perf.perf)
app.command("reprice")(pricing.reprice_command)
app.command("chargeback")(chargeback.chargeback_command)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("run", context_settings={"allow_interspersed_args": False})(run.run)
app.add_typer(keys.app, name="keys")
app.add_typer(pricing.app, name="pricing")
app.add_typer(budget.app, name="budget")
app.add_typer(limit.app, name="limit")
app.add_typer(db.app, name="db")


def _version(value: bool) -> None:
    if value:
        print(f"ometer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Meter, price and charge back every Ollama call."""
    # The settings are read once in this run, and afresh in the next (cli/_settings.py).
    run_started()
    ctx.call_on_close(run_ended)
    _logging()  # here, not in main(): help and --version need no settings


_RECORDING = frozenset({"chat", "run", "serve"})
"""The commands that record calls, whose spans wait in the spool while the ledger fails: the
others' errors say nothing of a spool."""


def _command(argv: list[str]) -> str | None:
    return next((arg for arg in argv[1:] if not arg.startswith("-")), None)


def _records_calls(argv: list[str]) -> bool:
    return _command(argv) in _RECORDING


def _stopped_cleanly(argv: list[str], stop: SystemExit) -> bool:
    """Whether ``stop`` is a gateway's SIGTERM or SIGHUP (``systemctl stop``, a terminal gone)
    that came before its server took the signals itself: while it started (migrations, the
    spool's drain, each its own transaction: nothing is left half done) or as it ended. Such a
    gateway exits 0, as one the signal stopped while serving does (``gateway/_drain.py``)."""
    if _command(argv) != "serve":
        return False
    from ollama_meter.gateway import CLEAN_STOPS

    return stop.code in {128 + signum for signum in CLEAN_STOPS}


def _terminate(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C does, so a call in flight is still written as a span.
    raise SystemExit(128 + signum)


def _logging() -> None:
    """Logs as configured; a broken setting is reported by the command that reads it (and a
    misspelt one is logged then, as configured)."""
    try:
        cfg = settings(warn=False)
    except OmeterError:
        configure_logging()
        return
    configure_logging(cfg.log_level, cfg.log_format)


def main() -> None:
    """Entry point: run the app, turning ometer's own errors into one line and an exit code."""
    stderr = sys.stderr
    sys.stderr = Diagnostics(stderr)
    try:
        _main()
    finally:  # however it ended (click ends a closed pipe itself, with SystemExit)
        out.discard()
        sys.stderr = stderr


def _main() -> None:
    if sys.stdout is None:  # started with it closed (`>&-`): Python gives no stream at all
        sys.stdout = _ClosedStdout()
    escape_unencodable()
    try:
        with contextlib.nullcontext() if _records_calls(sys.argv) else recording_nothing():
            try:
                # SIGTERM, a terminal gone (SIGHUP), Ctrl-\ (SIGQUIT) stop a command as Ctrl-C
                # does, its call still written as a span; one that came as ometer loaded, now.
                take_over(_terminate)
                code = command()(standalone_mode=False)
            except SystemExit as stop:
                if not _stopped_cleanly(sys.argv, stop):
                    raise
                code = 0
        sys.stdout.flush()  # here, where a failure to write the output is still ours to report
        if code == INTERRUPTED:  # typer's answer to Ctrl-C inside a command: said, not silent
            err.print("interrupted")
    except OmeterError as exc:
        # Plain write: one line whatever the terminal width, easy to grep in cron mail.
        sys.stderr.write(f"error: {printable(_arguments_cut(str(exc)))}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(INTERRUPTED)
    except OSError as exc:
        if exc.errno not in _CANNOT_WRITE:
            _bug(exc)
        _drop_stdout()  # what is left in its buffer would fail again at exit
        if exc.errno == errno.EPIPE:  # `| head` had what it wanted: quiet, but not all was said
            sys.exit(1)  # as click itself exits when the pipe closes inside a command
        where = f" {exc.filename}" if exc.filename else " the output"
        advice = "; free some space and run again" if exc.errno in _FULL else ""
        if isinstance(sys.stdout, _ClosedStdout):
            advice = "; give the command somewhere to write (> FILE)"
        sys.stderr.write(f"error: cannot write{where}: {exc.strerror}{advice}\n")
        sys.exit(1)
    except Exception as exc:
        if _usage_error(exc):
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        _bug(exc)
    if not code and (ledgers := sys.modules.get("ollama_meter.ledger._ledger")):
        # A call answered, its span saved outside the ledger (an ERROR line names the file
        # to import): unrecorded until someone does, which a script must be able to notice.
        code = 1 if ledgers.give_up_held_spans() else code
    sys.exit(code if isinstance(code, int) else 0)


INTERRUPTED = 130
"""The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_CANNOT_WRITE = _FULL | {errno.EPIPE, errno.EIO, errno.EROFS, errno.EBADF}
"""Errors of the machine, not of ometer, that writing output (stdout, ``--out``) can meet."""


class _ClosedStdout(io.TextIOBase):
    """Where output goes when the process was started without stdout: a write is an
    OSError (reported as output that cannot be written), a command that writes nothing
    is not disturbed."""

    def _refuse(self, *_: object) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    write = _refuse

    @property
    def buffer(self) -> "_ClosedStdout":
        return self

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


def _bug(exc: BaseException) -> NoReturn:
    """A bug, not the user's mistake: one line, the traceback on request, exit 70."""
    logging.getLogger("ollama_meter").debug("unexpected failure", exc_info=exc)
    sys.stderr.write(
        f"error: unexpected {type(exc).__name__}: {printable(str(exc))}. This is a bug in "
        "ometer: run again with OMETER_LOG_LEVEL=debug for the traceback, and report it\n"
    )
    sys.exit(70)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout closed or not a file: nothing to flush into
        pass


@cache
def command() -> Any:
    """The app as click runs it, every command refusing a single-valued option given twice."""
    root = typer.main.get_command(app)
    _once(root)
    return root


def _once(command: Any) -> None:
    """Make ``--month 2026-11 --month 2026-10`` a usage error; click keeps the last silently,
    and a cron line edited in a hurry would bill the wrong month with exit code 0.

    Typer's click is its own private copy, so commands, groups and options are known by
    their attributes, and the error is typer's public BadParameter (a usage error)."""
    if hasattr(command, "commands"):
        for sub in command.commands.values():
            _once(sub)
        return
    parse_args = command.parse_args

    def parse_once(ctx: typer.Context, args: list[str]) -> list[str]:
        seen = set()
        given, strays, order = command.make_parser(ctx).parse_args(args=list(args))
        if strays and not ctx.allow_extra_args:
            _stray(ctx, command, strays, given)
        for param in order:
            if param.param_type_name == "option" and not (
                param.multiple or param.count or param.is_eager
            ):
                if param in seen:
                    raise typer.BadParameter("given twice; give it once", ctx=ctx, param=param)
                seen.add(param)
        _whole_numbers(ctx, command, given)
        rest: list[str] = parse_args(ctx, args)
        return rest

    command.parse_args = parse_once


_USAGE_ERROR = typer.BadParameter.__bases__[0]  # typer's copy of click's UsageError


def _stray(ctx: typer.Context, command: Any, strays: list[str], given: dict[str, Any]) -> None:
    """Refuse values no argument takes, naming them and what to do. Click checked the required
    options first: ``ometer chargeback 2026-12`` said "Missing option '--month'", naming
    neither the stray ``2026-12`` nor that it was read as nothing."""
    named = ", ".join(quoted(stray) for stray in strays)
    takes = [
        (p.metavar or p.name).upper() for p in command.params if p.param_type_name == "argument"
    ]
    where = ctx.command_path
    if takes:
        what = (
            f"{where} takes {len(takes)} argument{'s' if len(takes) > 1 else ''} "
            f"({', '.join(takes)}); put a value with spaces in quotes, and each other value "
            "after its option"
        )
    else:
        what = f"{where} takes no arguments; each value goes after its option"
    missing = [
        p
        for p in command.params
        if p.param_type_name == "option" and p.required and given.get(p.name) is None
    ]
    if len(strays) == 1 and len(missing) == 1:
        option = max(missing[0].opts, key=len)
        what += f": did you mean {option} {strays[0]}?"
    plural = "s" if len(strays) > 1 else ""
    raise _USAGE_ERROR(f"unexpected argument{plural} {named}: {what}", ctx=ctx)


def _whole_numbers(ctx: typer.Context, command: Any, given: dict[str, Any]) -> None:
    """Refuse an integer option or argument written as anything but digits
    (:func:`~ollama_meter._names.whole_number`): typer read ``--keep-days 10.0`` as 10. So too
    the environment variable of one not given (``OMETER_SLOTS=2_048 ometer serve`` ran 2,048
    slots), set blank included, as a setting read by :mod:`ollama_meter.config` is (click
    takes a blank variable for one not set, and went on with the default)."""
    for param in command.params:
        raw = given.get(param.name)
        if raw is None and isinstance(getattr(param, "envvar", None), str):
            raw = os.environ.get(param.envvar)
        descriptor = getattr(param, "type_descriptor", None)
        if not isinstance(raw, str) or descriptor is None:
            continue
        if descriptor.annotation in (int, int | None):
            try:
                whole_number(raw)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None


def _usage_error(exc: Exception) -> bool:
    """Show a mistyped command, option or value (click's usage errors) as one line; False if
    ``exc`` is none. Known by shape: typer raises its own copy of click's exceptions."""
    show, message = getattr(exc, "show", None), getattr(exc, "format_message", None)
    if not (
        callable(show) and callable(message) and isinstance(getattr(exc, "exit_code", None), int)
    ):
        return False
    if type(exc).__name__ == "NoArgsIsHelpError":
        show()  # a bare command: its help
        return True
    # typer validates through pydantic, whose ValueError text starts "Value error, ".
    # One line, its breaks as spaces; runs of spaces kept: a value's own ("n  .csv") is said as given.
    line = re.sub(r"[ \t]*[\r\n]+\s*", " ", str(message()).strip())
    line = line.replace(": Value error, ", ": ")
    context = getattr(exc, "ctx", None)
    if context is not None:
        line += f" (see `{context.command_path} --help`)"
    sys.stderr.write(f"error: {printable(_arguments_cut(line))}\n")
    return True


_LONG_ARGUMENT = 200
"""An argument longer than this is quoted in an error by its start and its length."""


def _arguments_cut(message: str) -> str:
    """``message`` with each long argument of the command line it quotes (as ``'...'``, or as
    it was typed) cut to its start and its length, as the name filters' notes quote one.

    Every refusal quotes the value it refuses, and a value from a variable that held a
    file, or a paste gone wrong, made the one line 120,000 characters long. Cut here, where
    every refusal is written, so no message has to remember to.
    """
    values = {arg.partition("=")[2] if arg.startswith("--") else arg for arg in sys.argv[1:]}
    long = sorted((v for v in values if len(v) > _LONG_ARGUMENT), key=len, reverse=True)
    for value in long:
        cut = quoted(value)
        message = message.replace(repr(value), cut).replace(value, cut)
    # What a long value names, quoted as it was read (a --db URL's path, a file name the
    # system cut short), and not the value as typed: as long a line, all of it.
    for word in set(re.findall(rf"[^\s'\"]{{{_LONG_ARGUMENT + 1},}}", message)):
        part = word.rstrip(":;,.)")
        if len(part) > _LONG_ARGUMENT and any(part in value for value in long):
            message = message.replace(part, quoted(part))
    return message
