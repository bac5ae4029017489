"""``ometer run``: a program run with OLLAMA_HOST pointed at a short-lived gateway, as a shell
runs a foreground job (its signals, its exit status), and what that gateway metered."""

import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated
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
from ollama_meter.cli._job import _Job
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
    server = GatewayServer(
        server_config(app, host="127.0.0.1", port=port), drain_s=cfg.drain_timeout
    )
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
    if running := server.unanswered():  # a call answered but not yet ended is not counted
        err.print(
            f"ometer: the program exited; {running} call(s) it left running have up to "
            f"{server.drain_s:g} s to finish (Ctrl-C stops them now)"
        )
    thread.join()
