"""``ometer run``: a program run with OLLAMA_HOST pointed at a short-lived gateway, as a shell
runs a foreground job (its signals, its exit status), and what that gateway metered."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from ollama_meter._runtime import serving
from ollama_meter.cli._common import (
    DbOption,
    DeptOption,
    OriginsOption,
    TenantOption,
    money,
    settings,
)
from ollama_meter.cli._console import err
from ollama_meter.errors import ValidationError
from ollama_meter.records import Source, SpanRecord, Status

if TYPE_CHECKING:
    from ollama_meter.gateway import GatewayOptions, GatewayServer


class _Tally:
    """What ``ometer run``'s gateway metered, counted as its spans end (a span observer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = self.failed = self.tokens_in = self.tokens_out = 0
        self.cost: dict[str, int] = {}

    def on_start(self, span: SpanRecord) -> None:
        pass

    def on_end(self, span: SpanRecord) -> None:
        with self._lock:
            self.calls += 1
            self.failed += span.status != Status.OK
            self.tokens_in += span.input_tokens
            self.tokens_out += span.output_tokens
            self.cost[span.currency] = self.cost.get(span.currency, 0) + span.cost_total

    def summary(self, default: str, currency: str) -> str:
        with self._lock:
            spent = " + ".join(money(micros, currency) for currency, micros in self.cost.items())
            return (
                f"{self.calls} call(s) metered for {default}: {self.tokens_in} in / "
                f"{self.tokens_out} out tokens, {spent or money(0, currency)}, {self.failed} failed"
            )


def run(
    command: Annotated[list[str], typer.Argument(help="The program to run, after --.")],
    dept: DeptOption = None,
    tenant: TenantOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="User to attribute the calls to.")
    ] = None,
    origins: OriginsOption = "",
    db: DbOption = None,
) -> None:
    """Run a program with OLLAMA_HOST pointed at a short-lived gateway: legacy scripts, metered."""
    from ollama_meter.gateway import (
        GatewayServer,
        create_app,
        listening_socket,
        server_config,
    )
    from ollama_meter.meter import Attribution, Meter

    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department, user=user)
    options = gateway_options(user, origins)
    tally = _Tally()
    meter = Meter.from_settings(cfg, source=Source.GATEWAY, observers=[tally])
    sock = listening_socket("127.0.0.1", 0)  # bound here: no other program can take the port
    port = int(sock.getsockname()[1])
    app = create_app(cfg, options, meter=meter)
    server = GatewayServer(server_config(app, host="127.0.0.1", port=port))
    serving()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ValidationError(f"could not start the gateway on port {port}")
        time.sleep(0.01)
    gateway = f"http://127.0.0.1:{port}"
    env = program_environment(os.environ, [spec.url for spec in cfg.upstream_specs], gateway)
    # An ometer client in the program (``ometer chat``, the Python API) charges the run's
    # tenant and department unless told otherwise, and writes to the run's ledger (--db): it
    # names them to the gateway, whose span is then the call's one record
    # (``meter/_elsewhere.py``); on another ledger the call was recorded in both.
    env.update(
        OMETER_TENANT=who.tenant, OMETER_DEPARTMENT=who.department, OMETER_DB_URL=cfg.ledger_url
    )
    with _Job(server.cut_drain) as job:
        try:
            code = job.foreground(command, env)
        finally:
            # Calls the program left running (work it put in the background) are drained as
            # `ometer serve` drains them on SIGTERM: each finishes, or is stopped with a clear
            # last answer when the drain ends, and its span is written before ometer exits.
            # A bound here cut them with no answer, their spans only in the journal.
            server.should_exit = True
            _drained(server, thread)
    err.print(f"ometer: {tally.summary(f'{who.tenant}/{who.department}', cfg.currency)}")
    sys.exit(code)


def program_environment(
    environ: Mapping[str, str], upstreams: Sequence[str], gateway: str
) -> dict[str, str]:
    """The program's environment: ``OLLAMA_HOST`` and ``OPENAI_BASE_URL`` at the gateway, and
    every other variable that names an Ollama the gateway relays to (``OPENAI_API_BASE``,
    LiteLLM's ``OLLAMA_API_BASE``, an app's own) pointed there too, in the form it had (a
    URL, or ``host:port``) and with its path: else the program reached Ollama unmetered."""
    env = dict(environ)
    for name, value in environ.items():
        if (pointed := _repointed(value, upstreams, gateway)) is not None:
            env[name] = pointed
    env.update(OLLAMA_HOST=gateway, OPENAI_BASE_URL=f"{gateway}/v1")
    _past_proxies(env, urlsplit(gateway).hostname or "127.0.0.1")
    return env


_PROXIES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def _past_proxies(env: dict[str, str], host: str) -> None:
    """The gateway's ``host`` in the program's ``no_proxy`` when it is told to use a proxy: its
    client (httpx, requests, curl) sent the calls to the gateway on this machine's loopback to
    the proxy, which cannot reach it (most proxy only ``localhost`` past it, if anything).
    Each spelling set keeps what it says; with none, both are set."""
    if not any(name.lower() in _PROXIES and value.strip() for name, value in env.items()):
        return
    spellings = [name for name in ("no_proxy", "NO_PROXY") if name in env] or [
        "no_proxy",
        "NO_PROXY",
    ]
    for name in spellings:
        entries = [entry.strip() for entry in env.get(name, "").split(",") if entry.strip()]
        if "*" not in entries and host not in entries:
            env[name] = ",".join([*entries, host])


_THIS_MACHINE = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


def _where(url: str) -> tuple[str, str, int, str] | None:
    """Scheme, host (this machine's by one name), port and path of a URL or ``host:port``
    (with a port: a bare word is no address); None for what is neither, or carries a login."""
    schemed = "://" in url
    try:
        parts = urlsplit(url if schemed else f"http://{url}")
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if port is None and not schemed:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, "localhost" if host in _THIS_MACHINE else host, port, parts.path


def _repointed(value: str, upstreams: Sequence[str], gateway: str) -> str | None:
    """``value`` pointed at ``gateway`` if it names one of ``upstreams``; else None."""
    if not value or any(c.isspace() for c in value) or (here := _where(value)) is None:
        return None
    for upstream in upstreams:
        there = _where(upstream)
        if there is None or here[:3] != there[:3]:
            continue
        base = there[3].rstrip("/")
        if here[3] == base or here[3].startswith(f"{base}/"):
            rest = here[3][len(base) :] + (f"?{value.split('?', 1)[1]}" if "?" in value else "")
            return (gateway if "://" in value else gateway.split("://", 1)[1]) + rest
    return None


def gateway_options(user: str | None, origins: str) -> "GatewayOptions":
    """How ``ometer run``'s gateway answers: on loopback, with no key, for its program alone.

    Its own pages are refused: any local user could otherwise read every tenant's spend
    from them (a ledger they may not open themselves) while the program runs.
    ``origins`` as ``ometer serve``'s: a malformed entry is an error before the program runs.
    """
    from ollama_meter.gateway import GatewayOptions

    return GatewayOptions(
        default_user=user, loopback=True, origins=tuple(origins.split(",")), own_pages=False
    )


def _drained(server: "GatewayServer", thread: threading.Thread) -> None:
    """Wait for the gateway to stop (a signal meanwhile cuts its drain: see ``_Job``)."""
    if running := len(server.server_state.tasks):  # each leaves the set as it ends
        err.print(
            f"ometer: the program exited; {running} call(s) it left running have up to "
            f"{server.drain_s:g} s to finish (Ctrl-C stops them now)"
        )
    thread.join()


_GROUPS = (signal.SIGINT, signal.SIGQUIT)
"""What a terminal sends its whole foreground group (Ctrl-C, Ctrl-\\): the program has it too;
sent to ometer alone (no terminal), it is passed on."""
_PASSED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
"""Signals sent to ``ometer`` alone that would end it, passed on to its program."""
_ENDING = (*_GROUPS, signal.SIGTERM, signal.SIGHUP)
"""Signals that, once the program has exited, cut the gateway's drain."""


class _Job:
    """ometer's signals from before its program starts until its gateway has drained.

    While the program runs, as a shell runs a foreground job: Ctrl-C and Ctrl-\\ reach the
    program from the terminal (the whole group gets them), so here they do nothing: the
    program decides what they mean (a JVM prints its threads on Ctrl-\\ and goes on), and its
    gateway meters what it still does. With no terminal they came to ometer alone (``docker
    run`` without ``-t`` passes Ctrl-C to the container's first process): passed on. A SIGTERM, SIGHUP, SIGUSR1 or SIGUSR2 sent to ``ometer``
    is passed on (as ``timeout`` passes its signal): each ended ometer and its gateway by
    default, and what the program did after it went unmetered (its calls refused).

    Once the program has exited (or could not start), a Ctrl-C, Ctrl-\\, SIGTERM or SIGHUP calls
    ``cut``: the drain ends there and then, or as it begins (each call stopped with a clear
    last answer, its span written); they ended ometer under it, each call cut with no answer
    and its span left in the journal. One set of handlers for both: one that came between
    the two (the program gone, the drain not yet begun) was lost, the drain ran its 10 s.

    In place before the program starts: a SIGTERM in between ended ometer alone and left the
    program running, unmetered. Ctrl-C gets a handler, not SIG_IGN, which the program would
    inherit (unless ometer has it so: a shell's background job); a signal ometer ignores
    (a hang-up under nohup) is left ignored for the program to inherit.
    """

    def __init__(self, cut: Callable[[], None] = lambda: None) -> None:
        self.cut = cut
        self.program: subprocess.Popen[bytes] | None = None
        self.early: list[int] = []  # signals that came while the program was being started
        self.ended = False
        self._before: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> "_Job":
        taken = [signal.SIGTERM]
        taken += [s for s in (*_GROUPS, *_PASSED) if signal.getsignal(s) != signal.SIG_IGN]
        self._before = {sig: signal.signal(sig, self._signalled) for sig in {*taken}}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _signalled(self, sig: int, _frame: object) -> None:
        program = self.program
        if self.ended or (program is not None and program.returncode is not None):
            if sig in _ENDING:
                self.cut()
        elif sig in _GROUPS and _from_terminal():
            pass  # the program has it too: its to decide
        elif program is None:
            self.early.append(sig)
        else:
            program.send_signal(sig)

    def foreground(self, command: list[str], env: dict[str, str]) -> int:
        """Run ``command``; its exit status, as a shell gives it (ended by a signal: 128 + it)."""
        try:
            self.program = _started(command, env)
            for sig in self.early:
                self.program.send_signal(sig)
            code = self.program.wait()
        finally:
            self.ended = True
        return 128 - code if code < 0 else code


def _from_terminal() -> bool:
    """Whether a Ctrl-C or Ctrl-\\ came from ometer's terminal to its whole foreground group
    (the program too): ometer is that group. With no terminal (a container's first process,
    ``docker run`` without ``-t`` passing a Ctrl-C on, ``kill -INT``) it came to ometer alone,
    and the program would never hear it."""
    try:
        terminal = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(terminal) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(terminal)


def _started(command: list[str], env: dict[str, str]) -> "subprocess.Popen[bytes]":
    """``command`` started as a shell starts it: an executable text file with no ``#!`` line
    (a legacy shell script) is run by ``/bin/sh``, as POSIX ``execvp`` (and so ``nice``,
    ``env``, ``timeout``) runs it; Python alone refused it (Exec format error)."""
    try:
        try:
            return subprocess.Popen(command, env=env)
        except OSError as exc:
            script = _shell_script(command[0], env) if exc.errno == errno.ENOEXEC else None
            if script is None:
                raise
            return subprocess.Popen(["/bin/sh", script, *command[1:]], env=env)
    except OSError as exc:  # none by that name, not executable, a folder, ...
        raise _not_run(command[0], exc) from None


def _shell_script(program: str, env: dict[str, str]) -> str | None:
    """The file ``program`` names (on PATH when it has no slash), if its first line holds
    no NUL byte: text for a shell, not a binary of another machine (as bash decides)."""
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        return None
    with open(found, "rb") as file:
        head = file.read(80)
    return None if b"\0" in head.split(b"\n", 1)[0] else found


def _not_run(name: str, exc: OSError) -> ValidationError:
    """The error for a program that could not be started, with the status a shell gives
    it (127: not found, 126: found but not runnable), so scripts tell it from the program's.
    The system's word alone (``cannot run : Permission denied`` for an empty name, the same
    for a folder) said neither what was wrong nor what to do."""
    if not name:
        message, status = (
            "the program to run is empty: give its name after --, e.g. ometer run -- python job.py",
            127,
        )
    elif isinstance(exc, FileNotFoundError):
        message, status = f"no such program: {name}", 127
    elif os.path.isdir(name):
        message, status = f"cannot run {name}: it is a folder, not a program", 126
    elif isinstance(exc, PermissionError) and os.path.isfile(name):
        message, status = (
            f"cannot run {name}: it is not executable: chmod +x {name}, or put the program "
            f"that runs it first (e.g. ometer run -- python {name})",
            126,
        )
    else:
        message, status = f"cannot run {name}: {exc.strerror or exc}", 126
    error = ValidationError(message)
    error.exit_code = status
    return error
