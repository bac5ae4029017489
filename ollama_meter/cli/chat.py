"""``ometer chat``: a metered chat with Ollama from the terminal."""

import contextlib
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ollama_meter._text import json_text
from ollama_meter.cli._common import DbOption, DeptOption, TenantOption, money, ms, settings
from ollama_meter.cli._console import err, inert, out, shown, write_data
from ollama_meter.errors import OmeterError, UpstreamError, ValidationError
from ollama_meter.records import SpanRecord, Stored, TokenSource

if TYPE_CHECKING:
    from ollama_meter.meter import Attribution, Meter


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["temperature=0.2", "num_predict=64"]`` → Ollama options with JSON-typed values; a
    value of a kind Ollama's option does not take, or past what it reads as given, refused
    (:func:`~ollama_meter.upstream.option_problem`): sent, Ollama refused it in its own words
    (a 400-digit seed), or ran with another (``seed=1.5`` as 1)."""
    from ollama_meter.upstream import option_problem

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValidationError(
                f"--option {pair!r} is not key=value, e.g. --option temperature=0.2"
            )
        key = utf8(key.strip(), "--option")
        raw = utf8(raw, f"--option {key}")
        if key in options:
            raise ValidationError(f"--option {key} is given twice; give it once")
        try:
            value = json.loads(raw, parse_float=_finite, parse_constant=_not_finite)
        except json.JSONDecodeError:
            value = raw
        except _NotFinite as exc:
            raise ValidationError(
                f"--option {key}: {exc} is not a finite number; give one such as 0.2"
            ) from None
        except RecursionError:
            raise ValidationError(f"--option {key!r}: its value is nested too deep") from None
        except ValueError:  # an integer longer than Python reads (sys.get_int_max_str_digits)
            digits = max((len(run) for run in re.findall(r"\d+", raw)), default=0)
            raise ValidationError(
                f"--option {key}: a number of {digits:,} digits is too long to send"
            ) from None
        if (problem := option_problem(key, value)) is not None:
            raise ValidationError(f"--option {key} {problem}")
        options[key] = value
    return options


class _NotFinite(ValueError):
    """NaN or an infinity in an option: JSON cannot carry it to Ollama."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _not_finite(text: str) -> float:
    raise _NotFinite(text)


def footer(span: SpanRecord, recorded_by: str | None = None) -> str:
    """One line for stderr: tokens, cost, time to first token, speed, where the span is
    (``recorded_by``: the gateway on this ledger that recorded the call, not this command)."""
    approx = "~" if span.token_source == TokenSource.ESTIMATED else ""
    cost = "unpriced" if span.unpriced else money(span.cost_total, span.currency)
    speed = "-"
    if span.eval_duration_ns and span.output_tokens:
        speed = f"{span.output_tokens / (span.eval_duration_ns / 1e9):.1f} tok/s"
    where = f"span {span.id}"
    if recorded_by is not None:  # the gateway's span is the call's record: this wrote none
        where = f"recorded by the gateway at {recorded_by} as {where}"
    return (
        f"{approx}{span.input_tokens} in / {approx}{span.output_tokens} out tokens · {cost} · "
        f"TTFT {ms(span.ttft_ns)} · {speed} · {where}"
    )


def result_json(span: SpanRecord, reply: str, recorded_by: str | None = None) -> dict[str, Any]:
    """``--json``: the reply, the span's ledger id (``recorded_by``: the gateway that recorded
    it, when one on this ledger did), then the span as ``ometer log --json`` shows it."""
    from ollama_meter.reports import span_to_dict

    by = {} if recorded_by is None else {"recorded_by": recorded_by}
    return {"reply": reply, "span_id": span.id, **by, **span_to_dict(span)}


@dataclass(frozen=True, slots=True)
class _Session:
    """What every turn of one ``ometer chat`` asks with; each turn is its own metered call."""

    meter: "Meter"
    model: str
    attribution: "Attribution"
    stream: bool
    options: dict[str, Any] | None
    as_json: bool


def _turn(session: _Session, messages: list[dict[str, str]]) -> str:
    """Run one metered exchange, printing the reply as it arrives; returns the reply.

    With ``as_json`` a failure prints an error object too (with the span when there is
    one), then raises as usual, so scripts get JSON and an exit code either way.
    """
    import ollama

    from ollama_meter.reports import span_to_dict

    as_json = session.as_json
    run = session.meter.chat(
        model=session.model,
        messages=messages,
        attribution=session.attribution,
        stream=session.stream,
        options=session.options,
    )
    parts: list[str] = []
    chunks = iter(run)
    try:
        for chunk in chunks:
            text = (chunk.message.content or "") if isinstance(chunk, ollama.ChatResponse) else ""
            parts.append(text)
            if not as_json and text:
                out.file.write(inert(text, terminal=out.is_terminal))
                out.file.flush()
    except (OmeterError, KeyboardInterrupt, SystemExit) as exc:
        if not as_json and not "".join(parts).endswith("\n") and any(parts):
            with contextlib.suppress(OSError, ValueError):  # the cause is what to report
                out.file.write("\n")  # the reason goes on a line of its own
                out.file.flush()
        if as_json:
            if isinstance(exc, OmeterError):
                failure: dict[str, Any] = {"error": str(exc), "error_type": _error_type(exc)}
            else:  # Ctrl-C, or a signal (SystemExit 128+N): the span is written first
                chunks.close()
                failure = {"error": _stopped_by(exc), "error_type": "client_abort"}
            if run.call is not None:
                failure |= {"span_id": run.span.id, **span_to_dict(run.span)}
            write_data(json_text(failure) + "\n")
        raise
    finally:  # whatever stopped the loop (stdout gone, a bug): the call ends here, recorded
        chunks.close()
    reply = "".join(parts)
    if as_json:
        write_data(json_text(result_json(run.span, reply, run.recorded_by)) + "\n")
    else:
        if not reply.endswith("\n"):
            out.file.write("\n")
        out.file.flush()
        err.print(shown(footer(run.span, run.recorded_by), "dim"))
    if run.call is not None and run.call.stored not in (None, Stored.COMMITTED):
        err.print(shown("note:", "yellow"), STORED_NOTES[run.call.stored])
    return reply


STORED_NOTES = {
    Stored.SPOOLED: "the ledger was busy or away, so this call's span waits in the spool; "
    "the next ometer command that can write records it",
    Stored.QUARANTINED: "the ledger refused this call's span; it was set aside in the spool's "
    "quarantine folder (see the log)",
    Stored.HELD: "nothing on disk could record this call's span (is the disk full?); it was "
    "kept in memory, and is tried again as this command ends (an ERROR line says where it "
    "went if the ledger still cannot take it)",
}


def _stopped_by(exc: BaseException) -> str:
    code = exc.code if isinstance(exc, SystemExit) else None
    if isinstance(code, int) and code > 128:
        return f"stopped by signal {code - 128} before the answer was complete"
    return "interrupted before the answer was complete"


def _error_type(exc: OmeterError) -> str:
    return str(getattr(exc, "error_type", None) or type(exc).__name__)


def utf8(text: str, what: str) -> str:
    """``text`` as given, refused when it is not UTF-8 text.

    Python hands bytes of the command line (or of a terminal in a POSIX locale) that are
    not UTF-8 on as lone surrogates, which no request can carry: they are said as the
    bytes they were, before anything is sent or charged.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        which = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        at = len(text[: exc.start].encode("utf-8"))
        raise ValidationError(
            f"{what} is not UTF-8 text ({which} at position {at}); "
            "check the terminal's or the script's encoding"
        ) from None
    return text


def read_prompt(stdin: Any) -> str:
    """The prompt piped in on stdin, which must be UTF-8 text."""
    raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                f"stdin is not UTF-8 text (byte {raw[exc.start]:#04x} at position {exc.start}); "
                "convert it first, e.g. with `iconv -t UTF-8`"
            ) from None
    return str(raw).strip()


def chat(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="The prompt. Read from stdin when piped or given as -; interactive when omitted."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Ollama model, e.g. llama3.1:8b.")
    ] = "llama3.1:8b",
    dept: DeptOption = None,
    tenant: TenantOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="User to attribute the call to.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for the whole reply.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object: reply, tokens, cost, durations, span id."
        ),
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="Ollama option key=value (repeatable), e.g. temperature=0.2."
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Chat with a model through the meter: the reply on stdout, usage and cost on stderr."""
    from ollama_meter.meter import Attribution, Meter

    cfg = settings(db_url=db)
    # Given empty is given ('--dept "$DEPT"' with DEPT unset): refused, never the default.
    attribution = Attribution(
        tenant=cfg.tenant if tenant is None else tenant,
        department=cfg.department if dept is None else dept,
        user=user,
    )
    model = utf8(model, "--model")
    options = parse_options(option or []) or None
    system = None if system is None else utf8(system, "--system")
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    piped = prompt == "-"  # as in cat: read stdin, even from a terminal (until Ctrl-D)
    if (prompt is None or piped) and sys.stdin is None:  # `ometer chat <&-`
        raise ValidationError("no prompt: stdin is closed; give the prompt as an argument")
    if piped or (prompt is None and not sys.stdin.isatty()):
        prompt = read_prompt(sys.stdin)
        if not prompt:
            raise ValidationError("stdin was empty; give a prompt as an argument or pipe one in")
    elif prompt is not None and not utf8(prompt, "the prompt").strip():
        raise ValidationError("the prompt is empty; nothing was sent (and nothing charged)")
    meter = Meter.from_settings(cfg, source="cli")
    session = _Session(meter, model, attribution, not no_stream, options, as_json)
    try:
        if prompt is not None:
            _turn(session, [*history, {"role": "user", "content": prompt}])
            return
        _interactive(session, history)
    finally:
        meter.close_upstream()


def _interactive(session: _Session, history: list[dict[str, str]]) -> None:
    """A conversation kept for the session; every turn is its own metered call."""
    who = session.attribution
    err.print(
        shown(
            f"chatting with {session.model} as {who.tenant}/{who.department}; "
            "/help lists commands, /exit or Ctrl-D leaves",
            "dim",
        )
    )
    while True:
        try:
            line = err.input(shown("you> ", "bold cyan")).strip()
        except EOFError:
            err.print()
            return
        except KeyboardInterrupt:
            err.print()
            err.print(shown("(/exit or Ctrl-D leaves)", "dim"))
            continue
        except UnicodeDecodeError as exc:  # a terminal in a strict UTF-8 locale
            err.print()
            where = f"byte {exc.object[exc.start]:#04x} at position {exc.start}"
            err.print(
                shown("error:", "red"), f"that line is not UTF-8 text ({where}); nothing was sent"
            )
            continue
        if not line:
            continue
        try:
            utf8(line, "that line")
        except ValidationError as exc:
            err.print(shown("error:", "red"), f"{exc}; nothing was sent")
            continue
        if line.startswith("/"):  # commands are never sent to the model, nor charged
            if line in ("/exit", "/quit"):
                return
            if line == "/reset":
                history = [m for m in history if m["role"] == "system"]
                err.print(shown("history cleared", "dim"))
            elif line in ("/help", "/?"):
                err.print(INTERACTIVE_HELP)
            else:
                err.print(f"unknown command {line.split()[0]}; /help lists them")
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = _turn(session, history)
        except KeyboardInterrupt:  # Ctrl-C cancels this answer, not the session
            history.pop()
            out.file.write("\n")
            err.print(shown("answer cancelled (its span is recorded as client_abort)", "dim"))
            continue
        except UpstreamError as exc:  # the span is recorded; the session goes on
            history.pop()
            err.print(shown("error:", "red"), str(exc))
            continue
        history.append({"role": "assistant", "content": reply})


INTERACTIVE_HELP = """commands (never sent to the model):
  /reset   forget the conversation so far (the system prompt stays)
  /help    this list
  /exit    leave (also /quit or Ctrl-D)
Ctrl-C cancels the answer being written."""
